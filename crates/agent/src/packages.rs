//! Services whose program comes from a distribution package ([`ServiceProgram::Package`]): made
//! ready while a version is prepared, before anything of it starts, so that a package that
//! cannot be installed fails the rollout (and the old version keeps running) instead of a
//! service crash-looping after the switch.
//!
//! Where the machine's packages are the agent's to manage (`system_settings`, as on AWS):
//! 1. each package not yet installed has its distribution's own service unit (`<package>.service`)
//!    masked first, when systemd runs, so that installing it does not start a second copy on
//!    the service's port;
//! 2. the packages are installed as the boot additions install theirs (`dpkg-query` first, then
//!    `apt-get update` and `apt-get install`, waiting for apt's locks on the same schedule);
//!    apt verifies them with the distribution's signatures.
//!
//! Elsewhere (the local provider, the emulator) nothing is installed, and the program must be
//! at its path already. Either way the program's path is checked last.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use flotilla_spec::account::BootSpec;
use flotilla_spec::api::BootOutcome;
use flotilla_spec::manifest::{Manifest, PackageProgram, ServiceProgram};

use crate::binary_log::BinaryLog;
use crate::boot::BootTarget;
use crate::spawner::Spawner;

/// How long masking one unit may take.
const MASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Present when systemd is the running init (`sd_booted`).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// What the agent needs to make service packages ready.
#[derive(Clone, Debug)]
pub(crate) struct ServicePackages {
    pub(crate) target: BootTarget,
    pub(crate) spawner: Spawner,
}

impl ServicePackages {
    /// Makes every package program of `manifest` ready (see the module documentation); the
    /// error names the package or program and says why.
    pub(crate) async fn prepare(
        &self,
        version: &str,
        manifest: &Manifest,
        log: &BinaryLog,
    ) -> Result<(), String> {
        let programs = package_programs(manifest);
        if programs.is_empty() {
            return Ok(());
        }
        if self.target.system_settings {
            self.install(version, &programs, log).await?;
        }
        for program in &programs {
            check_program(program, &self.target)?;
        }
        Ok(())
    }

    async fn install(
        &self,
        version: &str,
        programs: &[&PackageProgram],
        log: &BinaryLog,
    ) -> Result<(), String> {
        if Path::new(SYSTEMD_RUNNING).exists() {
            for program in programs {
                if !Path::new(&program.path).exists() {
                    self.mask_unit(&program.package).await?;
                }
            }
        }
        let boot = BootSpec {
            packages: programs.iter().map(|p| p.package.clone()).collect(),
            tune_network: false,
            ..BootSpec::default()
        };
        let report =
            crate::boot::run(&boot, &[], version, &self.target, Vec::new(), &self.spawner, log)
                .await;
        match report.steps.iter().find(|step| step.outcome == BootOutcome::Failed) {
            None => Ok(()),
            Some(failed) => {
                let mut reason = format!(
                    "could not install the services' packages {}: {}",
                    failed.target,
                    failed.message.as_deref().unwrap_or("failed")
                );
                if let Some(output) = failed.output.as_deref().filter(|o| !o.trim().is_empty()) {
                    reason.push_str(&format!("\n{}", output.trim_end()));
                }
                Err(reason)
            }
        }
    }

    /// `systemctl mask <package>.service`: the distribution's unit of that name stays stopped.
    async fn mask_unit(&self, package: &str) -> Result<(), String> {
        let unit = format!("{package}.service");
        let argv = ["systemctl", "mask", "--now", &unit].map(str::to_owned);
        let env: Vec<(OsString, OsString)> = Vec::new();
        match crate::boot::run_process(&self.spawner, &argv, &self.target.dir, &env, MASK_TIMEOUT)
            .await
        {
            Ok(result) if result.end.succeeded() => Ok(()),
            Ok(result) => Err(format!(
                "could not mask {unit} before installing {package}: `{}` {}: {}",
                argv.join(" "),
                result.end.describe(),
                result.output.trim_end()
            )),
            Err(error) => {
                Err(format!("could not mask {unit} before installing {package}: {error}"))
            }
        }
    }
}

/// The package programs of `manifest`'s services, in service order.
fn package_programs(manifest: &Manifest) -> Vec<&PackageProgram> {
    manifest
        .services
        .iter()
        .filter_map(|service| match &service.program {
            ServiceProgram::Package(program) => Some(program),
            ServiceProgram::System(_) | ServiceProgram::Artifact(_) => None,
        })
        .collect()
}

/// The program is an executable file at its path.
fn check_program(program: &PackageProgram, target: &BootTarget) -> Result<(), String> {
    let executable = fs_err::metadata(&program.path)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if executable {
        return Ok(());
    }
    Err(if target.system_settings {
        format!(
            "the package {} is installed but has no program at {}",
            program.package, program.path
        )
    } else {
        format!(
            "{} is not on this machine, and packages are not installed on {}: install the package {} (Debian and Ubuntu: apt-get install {})",
            program.path, target.runs_on, program.package, program.package
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(system_settings: bool) -> BootTarget {
        BootTarget {
            root: "/".into(),
            system_settings,
            runs_on: "the test".to_owned(),
            dir: std::env::temp_dir(),
            disks: None,
            apt_lock_wait: Duration::from_secs(300),
        }
    }

    fn program(path: &str) -> PackageProgram {
        PackageProgram { package: "some-package".to_owned(), path: path.to_owned() }
    }

    #[test]
    fn a_program_must_be_an_executable_file_at_its_path() {
        assert!(check_program(&program("/bin/sh"), &target(false)).is_ok());
        let missing = check_program(&program("/nonexistent/prometheus"), &target(false));
        assert_eq!(
            missing.unwrap_err(),
            "/nonexistent/prometheus is not on this machine, and packages are not installed on the test: install the package some-package (Debian and Ubuntu: apt-get install some-package)"
        );
        let temp = tempfile::tempdir().unwrap();
        let plain = temp.path().join("plain");
        fs_err::write(&plain, "not a program").unwrap();
        let plain = plain.display().to_string();
        let not_executable = check_program(&program(&plain), &target(true));
        assert!(not_executable.unwrap_err().contains(&format!("has no program at {plain}")));
        let directory = check_program(&program("/usr/bin"), &target(true));
        assert!(directory.is_err());
    }
}
