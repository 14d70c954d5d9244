//! Every environment variable the emulator reads, prints or hands to instances, in one place.

/// Where moto listens (path-style S3 too); printed by `up`, read by [`crate::control`].
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
/// The booter's control API; printed by `up`, read by [`crate::control`].
pub const CONTROL_URL: &str = "FLOTILLA_EMULATOR_CONTROL";
/// The emulator's state directory; printed by `up`.
pub const STATE_DIR: &str = "FLOTILLA_EMULATOR_STATE";
/// The address map: the loopback blocks (`127.A.B.0/24,…`) that instances' public addresses
/// come from, reached as they are; printed by `up`.
pub const PUBLIC_IPS: &str = "FLOTILLA_EMULATOR_PUBLIC_IPS";
/// The machine-wide directory of loopback address leases, shared with the local provider
/// (`flotilla_local::lease`); read by `up`.
pub const LEASE_DIR: &str = "FLOTILLA_LEASE_DIR";
/// The Python virtual environment holding the pinned moto; read by `up`.
pub const VENV: &str = "FLOTILLA_EMULATOR_VENV";

/// The access key id `up` prints for a person; tests use their own, one per test (a scope).
pub const DEFAULT_ACCESS_KEY_ID: &str = "FLOTILLAEMULATORDEFAULTKEY";
/// The secret that goes with every access key id (moto does not check signatures).
pub const SECRET_ACCESS_KEY: &str = "flotilla-emulator-secret-access-key";
/// The region `up` prints.
pub const DEFAULT_REGION: &str = "us-east-1";

/// What `up` hands to moto's process: read by `python/flotilla_moto.py` (`MOTO_AMIS_PATH` by
/// moto itself).
pub mod moto {
    /// The port to listen on; 0 picks one, announced as `{"port": N}` on stdout.
    pub const PORT: &str = "FLOTILLA_EMULATOR_PORT";
    /// The leased blocks public IPs come from: `127.A.B,127.A.C,…`.
    pub const PUBLIC_BLOCKS: &str = "FLOTILLA_EMULATOR_PUBLIC_BLOCKS";
    /// The ports an address must have free to be handed out: `7443,9101,1338`
    /// ([`crate::addresses::PROBED_PORTS`]).
    pub const PROBE_PORTS: &str = "FLOTILLA_EMULATOR_PROBE_PORTS";
    /// Latency before every request, in milliseconds (scope `*`'s default).
    pub const LATENCY_MS: &str = "FLOTILLA_EMULATOR_LATENCY_MS";
    /// How long instances stay `pending`, in milliseconds (scope `*`'s default).
    pub const PENDING_MS: &str = "FLOTILLA_EMULATOR_PENDING_MS";
    /// How long instances stay `shutting-down` or `stopping`, in milliseconds.
    pub const SHUTTING_DOWN_MS: &str = "FLOTILLA_EMULATOR_SHUTTING_DOWN_MS";
    /// How long an EBS attachment stays `attaching`, in milliseconds.
    pub const ATTACH_MS: &str = "FLOTILLA_EMULATOR_ATTACH_MS";
    /// How long an EBS attachment stays `detaching`, in milliseconds.
    pub const DETACH_MS: &str = "FLOTILLA_EMULATOR_DETACH_MS";
    /// How long a terminated instance's volumes (those not deleted with it) stay attached, in
    /// milliseconds.
    pub const VOLUME_RELEASE_MS: &str = "FLOTILLA_EMULATOR_VOLUME_RELEASE_MS";
    /// The AMI catalogue moto loads at import.
    pub const AMIS_PATH: &str = "MOTO_AMIS_PATH";
}

/// The contract with the user-data script the AWS provider generates. On a real machine,
/// under cloud-init, all of these are unset and the script uses its defaults.
pub mod user_data {
    /// Prefix of every path the script writes (unset on AWS: `/`).
    pub const ROOT: &str = "FLOTILLA_ROOT";
    /// The instance's IMDS (unset on AWS: `http://169.254.169.254`).
    pub const IMDS_ENDPOINT: &str = "FLOTILLA_IMDS_ENDPOINT";
    /// Path-style S3 base URL (unset on AWS: the regional endpoint).
    pub const S3_ENDPOINT: &str = "FLOTILLA_S3_ENDPOINT";
    /// The address the agent binds (unset on AWS: all addresses).
    pub const LISTEN: &str = "FLOTILLA_LISTEN";
    /// `foreground`: exec the agent instead of installing a systemd unit.
    pub const SERVICE: &str = "FLOTILLA_SERVICE";
    /// A flotilla binary to use instead of downloading it when its sha256 matches.
    pub const AGENT_SEED: &str = "FLOTILLA_AGENT_SEED";
    /// The seed's SHA-256, computed once by the booter, so instances need not hash it.
    pub const AGENT_SEED_SHA256: &str = "FLOTILLA_AGENT_SEED_SHA256";
}
