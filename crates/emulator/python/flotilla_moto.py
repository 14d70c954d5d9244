"""flotilla's AWS emulator: moto 5.2.5 served in-process, with what flotilla's tests need added.

`flotilla-emulator up` writes this file into its state directory and runs it with the pinned
moto's Python. It serves moto's WSGI app with werkzeug (threaded) on 127.0.0.1 and adds, per
*scope* (the access key id of a request's SigV4 credential; `*` means every scope):

- latency before each request;
- injected errors by service and Action, and for launches by pool (instance type, AZ,
  on-demand or spot), rendered the way each AWS protocol renders errors;
- CreateFleet of type instant as AWS answers it (moto never fails one and puts everything on
  the first override): a dry pool's override is an `Errors` entry, the capacity goes to the open
  ones by the allocation strategy (spot prices below), and the instances launch through
  RunInstances' path with the launch template's user data, profile, groups, interfaces, block
  devices and tags, so the booter boots them alike;
- request counts by service and Action (S3 by operation);
- instance state timing: `pending` and `shutting-down`/`stopping` last a while, and the public
  IP appears when the instance is running;
- EBS attachments as EC2 keeps them: AttachVolume refuses a volume attached anywhere
  (`VolumeInUse`), another zone's volume, a taken device and a gone instance; an attachment is
  `attaching`, then `attached` after the scope's `attach_ms`; DetachVolume leaves it `detaching`
  for `detach_ms` before the volume is `available`; a terminated instance's volumes that are
  not deleted with it stay attached for `volume_release_ms` (moto does all of it at once, and
  moves an attached volume to a second instance). The instance listing carries each
  instance's attachments, for the booter's device files;
- the dependency checks moto skips (DeleteSubnet, DeleteSecurityGroup, DeleteVpc);
- route states: a route whose target is gone (a peering connection deleted, rejected, failed
  or expired; an internet gateway detached or deleted) is `blackhole`, as AWS reports it (moto
  says `active` for every route);
- CreateImage tagging its snapshot too, and CopyImage keeping Encrypted, KmsKeyId,
  TagSpecifications and ClientToken (moto drops them), with images' mappings saying whether
  their snapshot is encrypted;
- RunInstances root volumes with their mapping's IOPS and throughput (moto drops them, and
  then refuses io1 and io2);
- public IPs from a pool of loopback addresses the Rust side leased, recycled on termination,
  skipping an address whose agent or IMDS port something else on this machine holds;
- spot prices per zone and type, below on-demand (DescribeSpotPriceHistory), from the
  on-demand prices `up` hands over (flotilla-capacity's built-in table and region factors);
- the Pricing API moto lacks (`AWSPriceListService.GetProducts` and `DescribeServices`, JSON
  1.1 on the same endpoint): EC2 Linux on-demand prices from those tables;
- spot reclaim, on request or at random per scope (a seeded rate per minute): the instance's
  notice (served by its IMDS through the booter) at once, termination with EC2's spot
  StateReason after a delay;
- EC2's request throttling when a scope switches it on: flotilla-capacity's token buckets per
  scope and region (request buckets by action class, instance buckets), a request beyond its
  bucket answered `RequestLimitExceeded` and counted;
- AWS Health's `DescribeEvents` (Smithy RPC v2 CBOR, as the current SDKs send it, or JSON 1.1,
  on the same endpoint), which moto lacks, over
  events per scope that a test opens and closes through the control API;
- dedicated hosts as EC2 keeps them (moto tracks no capacity, no instance on a host and no
  Mac rule): a scope's capacity per zone (`InsufficientHostCapacity` beyond it, or injected per
  zone), AllocateHosts' ClientToken, the `tag:` filter of DescribeHosts and its `Instances`, a
  launch with `Placement.HostId` landing on that host (refused on a scrubbing, full or unknown
  host), a Mac host `pending` for the scope's `host_scrub_ms` after its instance stops or
  terminates, and ReleaseHosts answering per host (Unsuccessful items for an occupied host and
  for a Mac host inside its 24 hours), all on the scope's clock: real time plus an offset a
  test sets, so "24 hours later" needs no real wait;
- an instance role's S3 object reads held to the role's policies: a request signed with the
  credentials an instance's IMDS hands out (their session token names the instance) may
  GetObject or HeadObject only what the role's inline and attached policies allow, an explicit
  Deny winning, as IAM decides (moto checks no policy unless every caller is a known IAM user);
  other calls with those credentials are not checked;
- a JSON control API under `/_flotilla/`, which also lets the booter end an instance it cannot
  boot, with an EC2 StateReason saying why.

Why in-process patches rather than a proxy in front of moto: the features above need moto's
state, not just its traffic. A pool rule needs the AZ of a subnet, a dependency check needs
the instances that use a group, and state timing and loopback addresses change what every
later Describe call reports. A proxy would have to keep its own copy of that state and rewrite
moto's XML in every response that shows it; a patch changes the model once, and moto renders
it (errors included) in every protocol. moto is pinned to 5.2.5, so the patched internals do
not move underneath us.

Environment (set by the Rust side, listed in `src/env.rs`): FLOTILLA_EMULATOR_PORT (0 picks a
free port; the chosen one is printed as `{"port": N}` on stdout), FLOTILLA_EMULATOR_PUBLIC_BLOCKS
(`127.A.B,...`), FLOTILLA_EMULATOR_PROBE_PORTS (`7443,9101,1338`),
FLOTILLA_EMULATOR_PENDING_MS, FLOTILLA_EMULATOR_SHUTTING_DOWN_MS, FLOTILLA_EMULATOR_ATTACH_MS,
FLOTILLA_EMULATOR_DETACH_MS, FLOTILLA_EMULATOR_VOLUME_RELEASE_MS, FLOTILLA_EMULATOR_LATENCY_MS,
and MOTO_AMIS_PATH (read by moto at import).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import fnmatch
import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult
from moto.iam.access_control import IAMPolicy, PermissionResult
from moto.ec2.exceptions import (
    DependencyViolationError,
    EC2ClientError,
    InvalidVolumeDetachmentError,
    VolumeInUseError,
)
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.models import elastic_ip_addresses as moto_eips
from moto.ec2.models.elastic_ip_addresses import ElasticAddressBackend
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.fleets import Fleet, FleetsBackend
from moto.ec2.models.hosts import Host
from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS, INSTANCE_TYPES
from moto.ec2.models.instances import Instance, InstanceBackend, StateReason
from moto.ec2.models.route_tables import Route
from moto.ec2.models.security_groups import SecurityGroupBackend
from moto.ec2.models.subnets import SubnetBackend
from moto.ec2.models.vpcs import VPCBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.fleets import Fleets
from moto.ec2.responses.hosts import HostsResponse
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.spot_instances import SpotInstances
from moto.ec2.utils import convert_tag_spec, filter_iam_instance_profiles
from moto.iam.models import get_account_id_from
from moto.iam.responses import IamResponse
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
ANY = "*"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


# --- Who is asking: scope, service, region, Action ------------------------------------------


@dataclass
class Call:
    scope: str
    service: str
    region: str
    action: str
    params: dict[str, str]
    method: str
    json_protocol: bool
    cbor_protocol: bool = False


def read_form_body(environ: Environ) -> str:
    """The form-encoded body (query protocols), put back for moto to read again."""
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return ""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return ""
    if not length:
        return ""
    raw = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(raw)
    return raw.decode("utf-8", "replace")


def credential(environ: Environ, query: dict[str, str]) -> list[str]:
    """`[access key id, date, region, service, ...]` from the SigV4 header or a presigned URL."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        return auth.split("Credential=", 1)[1].split(",", 1)[0].strip().split("/")
    if auth.startswith("AWS "):  # SigV2, S3 only
        return [auth[4:].split(":", 1)[0], "", "us-east-1", "s3"]
    if "X-Amz-Credential" in query:
        return query["X-Amz-Credential"].split("/")
    if "AWSAccessKeyId" in query:
        return [query["AWSAccessKeyId"], "", "us-east-1", "s3"]
    return []


def identify(environ: Environ) -> Call:
    query = {
        k: v[0]
        for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()
    }
    params = dict(query)
    params.update(
        {k: v[0] for k, v in parse_qs(read_form_body(environ), keep_blank_values=True).items()}
    )
    parts = credential(environ, query)
    scope = parts[0] if parts and parts[0] else "-"
    region = parts[2] if len(parts) > 2 and parts[2] else "us-east-1"
    service = parts[3] if len(parts) > 3 and parts[3] else "s3"
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "/")
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        action = target.rsplit(".", 1)[-1]
    elif is_rpc_v2_cbor(environ) and rpc_v2_operation(path):
        action = rpc_v2_operation(path) or ""
    elif "Action" in params:
        action = params["Action"]
    elif service == "s3":
        action = s3_operation(method, path, query, environ)
    elif service == "route53":
        action = route53_operation(method, path)
    else:
        action = f"{method} {path}"
    return Call(scope, service, region, action, params, method, bool(target), is_rpc_v2_cbor(environ))


S3_BUCKET_SUBRESOURCES = {
    "acl": "BucketAcl",
    "cors": "BucketCors",
    "encryption": "BucketEncryption",
    "lifecycle": "BucketLifecycleConfiguration",
    "location": "BucketLocation",
    "logging": "BucketLogging",
    "notification": "BucketNotificationConfiguration",
    "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "BucketOwnershipControls",
    "policy": "BucketPolicy",
    "publicAccessBlock": "PublicAccessBlock",
    "replication": "BucketReplication",
    "tagging": "BucketTagging",
    "versioning": "BucketVersioning",
    "website": "BucketWebsite",
}
S3_OBJECT_SUBRESOURCES = {
    "acl": "ObjectAcl",
    "tagging": "ObjectTagging",
    "retention": "ObjectRetention",
    "legal-hold": "ObjectLegalHold",
    "attributes": "ObjectAttributes",
}
VERBS = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}


def s3_operation(method: str, path: str, query: dict[str, str], environ: Environ) -> str:
    """The S3 operation name of a path-style request, as the S3 API reference names it."""
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if not key:
        for sub, name in S3_BUCKET_SUBRESOURCES.items():
            if sub in query and method in VERBS:
                return VERBS[method] + name
        if method == "GET":
            if query.get("list-type") == "2":
                return "ListObjectsV2"
            if "versions" in query:
                return "ListObjectVersions"
            if "uploads" in query:
                return "ListMultipartUploads"
            return "ListObjects"
        return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(
            method, "DeleteObjects" if "delete" in query else f"{method}Bucket"
        )
    if "uploadId" in query:
        if method == "PUT":
            return "UploadPartCopy" if "HTTP_X_AMZ_COPY_SOURCE" in environ else "UploadPart"
        return {"POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(
            method, "ListParts"
        )
    if "uploads" in query and method == "POST":
        return "CreateMultipartUpload"
    for sub, name in S3_OBJECT_SUBRESOURCES.items():
        if sub in query and method in VERBS:
            return VERBS[method] + name
    if method == "PUT":
        return "CopyObject" if "HTTP_X_AMZ_COPY_SOURCE" in environ else "PutObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, f"{method}Object"
    )


def route53_operation(method: str, path: str) -> str:
    segments = path.strip("/").split("/")[1:]  # after the API version
    shape = tuple(s if i % 2 == 0 else "{id}" for i, s in enumerate(segments))
    names = {
        ("POST", ("hostedzone",)): "CreateHostedZone",
        ("GET", ("hostedzone",)): "ListHostedZones",
        ("GET", ("hostedzone", "{id}")): "GetHostedZone",
        ("DELETE", ("hostedzone", "{id}")): "DeleteHostedZone",
        ("POST", ("hostedzone", "{id}", "rrset")): "ChangeResourceRecordSets",
        ("GET", ("hostedzone", "{id}", "rrset")): "ListResourceRecordSets",
        ("GET", ("change", "{id}")): "GetChange",
        ("GET", ("hostedzonesbyname",)): "ListHostedZonesByName",
    }
    return names.get((method, shape), f"{method} /{'/'.join(segments[:1])}")


# --- Per-scope settings: latency, state timing, counts ------------------------------------------


class Scoped:
    """Values per scope, where `*` is the default for scopes without their own."""

    def __init__(self, default: dict[str, int]) -> None:
        self.values: dict[str, dict[str, int]] = {ANY: dict(default)}
        self.lock = threading.Lock()

    def get(self, scope: str) -> dict[str, int]:
        with self.lock:
            merged = dict(self.values[ANY])
            merged.update(self.values.get(scope, {}))
            return merged

    def set(self, scope: str, values: dict[str, int]) -> None:
        with self.lock:
            self.values.setdefault(scope, {}).update(values)

    def clear(self, scope: str, default: dict[str, int]) -> None:
        with self.lock:
            if scope == ANY:
                self.values[ANY] = dict(default)
            else:
                self.values.pop(scope, None)


LATENCY_DEFAULT = {"ms": env_int("FLOTILLA_EMULATOR_LATENCY_MS", 0)}
TIMING_DEFAULT = {
    "pending_ms": env_int("FLOTILLA_EMULATOR_PENDING_MS", 0),
    "shutting_down_ms": env_int("FLOTILLA_EMULATOR_SHUTTING_DOWN_MS", 0),
    "attach_ms": env_int("FLOTILLA_EMULATOR_ATTACH_MS", 0),
    "detach_ms": env_int("FLOTILLA_EMULATOR_DETACH_MS", 0),
    "volume_release_ms": env_int("FLOTILLA_EMULATOR_VOLUME_RELEASE_MS", 0),
    "host_scrub_ms": 0,  # set per scope through the control API
}
LATENCY = Scoped(LATENCY_DEFAULT)
TIMING = Scoped(TIMING_DEFAULT)


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_scope: dict[str, dict[str, dict[str, int]]] = {}

    def add(self, call: Call) -> None:
        with self.lock:
            actions = self.by_scope.setdefault(call.scope, {}).setdefault(call.service, {})
            actions[call.action] = actions.get(call.action, 0) + 1

    def get(self, scope: str) -> dict[str, dict[str, int]]:
        with self.lock:
            return json.loads(json.dumps(self.by_scope.get(scope, {})))

    def reset(self, scope: str) -> None:
        with self.lock:
            self.by_scope.pop(scope, None)


COUNTS = Counts()


# --- Injected errors --------------------------------------------------------------------------

# code: (HTTP status, message). Statuses follow AWS: capacity and internal errors are 500,
# throttling and unavailability 503, authorization 403, other client errors 400.
KNOWN_ERRORS = {
    "InsufficientInstanceCapacity": (
        500,
        "We currently do not have sufficient {type} capacity in the Availability Zone you"
        " requested ({az}). Our system will be working on provisioning additional capacity.",
    ),
    "InsufficientHostCapacity": (
        500,
        "There is not enough capacity to fulfill your Dedicated Host request.",
    ),
    "InsufficientCapacity": (500, "There is not enough capacity to fulfill your request."),
    "InsufficientAddressCapacity": (
        500,
        "Not enough available addresses to satisfy your minimum request.",
    ),
    "InternalError": (500, "An internal error has occurred."),
    "InternalFailure": (
        500,
        "The request processing has failed because of an unknown error, exception, or failure.",
    ),
    "RequestLimitExceeded": (503, "Request limit exceeded."),
    "Unavailable": (503, "The server is overloaded and can't handle the request."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
    "SlowDown": (503, "Please reduce your request rate."),
    "UnauthorizedOperation": (403, "You are not authorized to perform this operation."),
    "AccessDenied": (403, "Access Denied"),
    "Throttling": (400, "Rate exceeded"),
    "InstanceLimitExceeded": (
        400,
        "You have requested more instances than your current instance limit allows.",
    ),
    "VcpuLimitExceeded": (
        400,
        "You have requested more vCPU capacity than your current vCPU limit allows.",
    ),
    "MaxSpotInstanceCountExceeded": (400, "Max spot instance count exceeded."),
}

QUERY_NAMESPACES = {
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "sns": "http://sns.amazonaws.com/doc/2010-03-31/",
    "sqs": "http://queue.amazonaws.com/doc/2012-11-05/",
    "route53": "https://route53.amazonaws.com/doc/2013-04-01/",
}


class BadRequest(Exception):
    """A control request the emulator refuses; the message says what to fix."""


@dataclass
class Pool:
    instance_type: str
    availability_zone: str
    market: str  # "spot" or "on-demand"


@dataclass
class Rule:
    code: str
    service: str = ANY
    action: str = ANY
    probability: float = 1.0
    count: int | None = None
    instance_type: str | None = None
    availability_zone: str | None = None
    market: str | None = None
    status: int | None = None
    message: str | None = None
    hits: int = 0

    @staticmethod
    def parse(value: Any) -> Rule:
        fields = {"code", "service", "action", "probability", "count", "pool", "status", "message"}
        obj = expect_object(value, fields, "a fault rule")
        if not isinstance(obj.get("code"), str) or not obj["code"]:
            raise BadRequest('a fault rule needs `code`, e.g. "InsufficientInstanceCapacity"')
        probability = obj.get("probability", 1.0)
        if not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
            raise BadRequest(f"`probability` must be a number in 0..1, not {probability!r}")
        count = obj.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise BadRequest(f"`count` must be a positive integer or null, not {count!r}")
        pool = expect_object(
            obj.get("pool") or {}, {"instance_type", "availability_zone", "market"}, "`pool`"
        )
        if pool.get("market") not in (None, "spot", "on-demand"):
            raise BadRequest('`pool.market` must be "spot" or "on-demand"')
        status = obj.get("status")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise BadRequest("`status` must be an HTTP error status (400..599)")
        return Rule(
            code=obj["code"],
            service=str(obj.get("service") or ANY).lower(),
            action=str(obj.get("action") or ANY),
            probability=float(probability),
            count=count,
            instance_type=pool.get("instance_type"),
            availability_zone=pool.get("availability_zone"),
            market=pool.get("market"),
            status=status,
            message=obj.get("message"),
        )

    def has_pool(self) -> bool:
        return any(v is not None for v in (self.instance_type, self.availability_zone, self.market))

    def matches(self, call: Call, pool: Callable[[], Pool | None]) -> bool:
        if self.service not in (ANY, call.service) or self.action not in (ANY, call.action):
            return False
        if not self.has_pool():
            return True
        launch = pool()
        return launch is not None and self.matches_pool(launch)

    def matches_pool(self, pool: Pool) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.instance_type, pool.instance_type),
                (self.availability_zone, pool.availability_zone),
                (self.market, pool.market),
            )
        )

    def to_json(self) -> dict[str, Any]:
        pool = {
            "instance_type": self.instance_type,
            "availability_zone": self.availability_zone,
            "market": self.market,
        }
        return {
            "code": self.code,
            "service": self.service,
            "action": self.action,
            "probability": self.probability,
            "count": self.count,
            "pool": {k: v for k, v in pool.items() if v is not None} or None,
            "status": self.status,
            "message": self.message,
            "hits": self.hits,
        }


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: dict[str, list[Rule]] = {}
        self.random = random.Random()  # not moto's global one, which /moto-api/seed reseeds

    def pick(self, call: Call) -> tuple[Rule, Pool | None] | None:
        """The first rule of the call's scope, then of `*`, that matches and whose draw hits."""
        cached: list[Pool | None] = []

        def pool() -> Pool | None:
            if not cached:
                cached.append(launch_pool(call))
            return cached[0]

        with self.lock:
            for scope in (call.scope, ANY):
                for rule in self.rules.get(scope, []):
                    if rule.count == 0 or not rule.matches(call, pool):
                        continue
                    if self.random.random() >= rule.probability:
                        continue
                    rule.hits += 1
                    if rule.count is not None:
                        rule.count -= 1
                    return rule, pool()
        return None

    def pick_pool(self, scope: str, action: str, pool: Pool) -> Rule | None:
        """The first EC2 pool rule of `scope`, then of `*`, whose action is `*` or `action`,
        whose pool matches `pool` and whose draw hits: one launch attempt in that pool (a
        CreateFleet override) refused. Rules without a pool fail whole requests (pick())."""
        with self.lock:
            for key in (scope, ANY):
                for rule in self.rules.get(key, []):
                    if rule.count == 0 or not rule.has_pool():
                        continue
                    if rule.service not in (ANY, "ec2") or rule.action not in (ANY, action):
                        continue
                    if not rule.matches_pool(pool) or self.random.random() >= rule.probability:
                        continue
                    rule.hits += 1
                    if rule.count is not None:
                        rule.count -= 1
                    return rule
        return None

    def get(self, scope: str) -> list[dict[str, Any]]:
        with self.lock:
            return [rule.to_json() for rule in self.rules.get(scope, [])]

    def set(self, scope: str, rules: list[Rule]) -> None:
        with self.lock:
            self.rules[scope] = rules

    def add(self, scope: str, rule: Rule) -> None:
        with self.lock:
            self.rules.setdefault(scope, []).append(rule)


FAULTS = Faults()


def launch_pool(call: Call) -> Pool | None:
    """The capacity pool a RunInstances call asks for: type, AZ and market (an AllocateHosts
    call's: the host type and zone, on-demand)."""
    if call.service == "ec2" and call.action == "AllocateHosts":
        p = call.params
        zone = p.get("AvailabilityZone") or f"{call.region}a"
        return Pool(p.get("InstanceType") or p.get("InstanceFamily") or "", zone, "on-demand")
    if call.service != "ec2" or call.action != "RunInstances":
        return None
    p = call.params
    try:
        backend = ec2_backends[get_account_id_from(call.scope)][call.region]
    except KeyError:  # an unknown region: moto answers that itself
        return None
    instance_type = p.get("InstanceType")
    if not instance_type and (
        "LaunchTemplate.LaunchTemplateId" in p or "LaunchTemplate.LaunchTemplateName" in p
    ):
        try:
            template = backend._get_template_from_args(
                {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("LaunchTemplate.")}
            )
            instance_type = template.data.get("InstanceType")
        except Exception:  # an unknown template: moto answers that error itself
            instance_type = None
    subnet_id = p.get("SubnetId") or p.get("NetworkInterface.1.SubnetId")
    zone = p.get("Placement.AvailabilityZone")
    if subnet_id:
        # An unknown subnet: moto answers InvalidSubnetID.NotFound itself.
        with contextlib.suppress(Exception):
            zone = backend.get_subnet(subnet_id).availability_zone
    market = "spot" if p.get("InstanceMarketOptions.MarketType") == "spot" else "on-demand"
    return Pool(instance_type or "m1.small", zone or f"{call.region}a", market)


def fault_response(
    call: Call, rule: Rule, pool: Pool | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The error as the called service's protocol renders it."""
    status, message = KNOWN_ERRORS.get(
        rule.code, (400, f"{rule.code} (injected by flotilla-emulator)")
    )
    status = rule.status or status
    message = rule.message or message.format(
        type=pool.instance_type if pool else "the requested",
        az=pool.availability_zone if pool else f"{call.region}a",
    )
    request_id = str(uuid.uuid4())
    code, text = xml_escape(rule.code), xml_escape(message)
    if call.cbor_protocol:
        body = cbor_encode({"__type": rule.code, "message": message})
        return status, [*RPC_V2_CBOR_HEADERS, ("x-amzn-RequestId", request_id)], body
    if call.json_protocol:
        body = json.dumps({"__type": rule.code, "message": message}).encode()
        return (
            status,
            [
                ("Content-Type", "application/x-amz-json-1.0"),
                ("x-amzn-ErrorType", rule.code),
                ("x-amzn-RequestId", request_id),
            ],
            body,
        )
    error = f"<Code>{code}</Code><Message>{text}</Message>"
    if call.service == "ec2":
        xml = f"<Response><Errors><Error>{error}</Error></Errors>"
        xml += f"<RequestID>{request_id}</RequestID></Response>"
    elif call.service == "s3":
        xml = f"<Error>{error}<RequestId>{request_id}</RequestId></Error>"
    else:
        kind = "Sender" if status < 500 else "Receiver"
        namespace = QUERY_NAMESPACES.get(call.service, f"https://{call.service}.amazonaws.com/doc/")
        xml = f'<ErrorResponse xmlns="{namespace}"><Error><Type>{kind}</Type>{error}</Error>'
        xml += f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    body = (
        b""
        if call.method == "HEAD"
        else ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
    )
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- Loopback public IPs ------------------------------------------------------------------------


class AddressPoolExhausted(EC2ClientError):
    def __init__(self, busy: int) -> None:
        because = (
            f" ({busy} free addresses were skipped: something on this machine listens on"
            f" port {', '.join(map(str, PROBE_PORTS))} of them)"
            if busy
            else ""
        )
        super().__init__(
            "InsufficientAddressCapacity",
            f"flotilla-emulator's loopback public-IP pool is exhausted{because}: terminate"
            " instances or start it with more --public-ip-blocks",
        )


# The ports an instance's address must have free: the agent's API and metrics ports, and its
# IMDS (given by the Rust side).
PROBE_PORTS = [
    int(port) for port in os.environ.get("FLOTILLA_EMULATOR_PROBE_PORTS", "").split(",") if port
]


def busy_port(address: str) -> int | None:
    """The first of PROBE_PORTS that cannot be bound on `address`, probed as the agent binds
    (with SO_REUSEADDR, as Rust's listeners do): another local fleet, another emulator's
    instance or any program may hold it, and the booter could not boot the instance there."""
    for port in PROBE_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return port
    return None


class AddressPool:
    """Public IPs from the /24 blocks the Rust side leased; freed addresses are reused last.
    An address on which something else listens is skipped (and tried again later)."""

    def __init__(self, blocks: Iterable[str]) -> None:
        self.lock = threading.Lock()
        self.free: deque[str] = deque(
            f"{block}.{host}" for block in blocks for host in range(1, 255)
        )
        self.size = len(self.free)
        self.in_use: dict[str, Any] = {}

    def take(self, holder: Any) -> str:
        with self.lock:
            for _ in range(len(self.free)):
                address = self.free.popleft()
                port = busy_port(address)
                if port is None:
                    self.in_use[address] = holder
                    return address
                print(
                    f"flotilla-emulator: skipping {address}: port {port} is in use there",
                    file=sys.stderr,
                )
                self.free.append(address)
            raise AddressPoolExhausted(busy=len(self.free))

    def give(self, address: str | None) -> None:
        with self.lock:
            if address is not None and self.in_use.pop(address, None) is not None:
                self.free.append(address)

    def reset(self) -> None:
        """After /moto-api/reset every instance and address is gone: all are free again."""
        with self.lock:
            self.free.extend(self.in_use)
            self.in_use.clear()

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            holders = {ip: holder_name(holder) for ip, holder in self.in_use.items()}
            return {
                "size": self.size,
                "free": len(self.free),
                "in_use": holders,
                "next": list(itertools.islice(self.free, NEXT_SHOWN)),
            }


# How many of the next free addresses `/_flotilla/public-ips` shows, in the order they go out.
NEXT_SHOWN = 16


def holder_name(holder: Any) -> str:
    instance = getattr(holder, "instance", None)
    return getattr(instance, "id", None) or getattr(holder, "id", None) or str(holder)


POOL = AddressPool(b for b in os.environ.get("FLOTILLA_EMULATOR_PUBLIC_BLOCKS", "").split(",") if b)


def nic_check_auto_public_ip(self: Any) -> None:
    """moto picks 54.214.x.y; take a leased loopback address instead."""
    if self.public_ip_auto_assign and str(self.public_ip_auto_assign).lower() == "true":
        release_nic_address(self)
        self._flotilla_ip = POOL.take(self)
        self.public_ip = self._flotilla_ip


def release_nic_address(nic: Any) -> None:
    address = getattr(nic, "_flotilla_ip", None)
    if address is not None:
        if nic.public_ip == address:
            nic.public_ip = None
        nic._flotilla_ip = None
        nic._flotilla_hidden = False
        POOL.give(address)


def hide_public_ips(instance: Any) -> None:
    for nic in instance.nics.values():
        if getattr(nic, "_flotilla_ip", None) and nic.public_ip == nic._flotilla_ip:
            nic.public_ip = None
            nic._flotilla_hidden = True


def show_public_ips(instance: Any) -> None:
    for nic in instance.nics.values():
        if getattr(nic, "_flotilla_hidden", False):
            nic.public_ip = nic._flotilla_ip
            nic._flotilla_hidden = False


def visible_public_ips(instance: Any) -> list[tuple[NetworkInterface, str]]:
    return [(nic, nic.public_ip) for nic in instance.nics.values() if nic.public_ip]


def eip_address() -> str:
    return POOL.take("elastic-ip")


original_release_address = ElasticAddressBackend.release_address


def release_address(
    self: Any, address: str | None = None, allocation_id: str | None = None
) -> None:
    eips = self.address_by_ip([address]) if address else self.address_by_allocation([allocation_id])
    released = eips[0].public_ip if eips else None
    original_release_address(self, address=address, allocation_id=allocation_id)
    POOL.give(released)


# --- Instance state timing ----------------------------------------------------------------------

STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}


class Lifecycle:
    """Transitions due later (pending → running, shutting-down → terminated, stopping → stopped).

    They are applied when a request arrives (every request checks; the booter polls often),
    so nothing runs in the background.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.due: dict[str, tuple[float, Instance, str]] = {}
        self.next_deadline = float("inf")
        self.generation = 0

    def changed(self) -> None:
        self.generation += 1

    def schedule(self, instance: Any, after_ms: int, target: str) -> None:
        with self.lock:
            deadline = time.monotonic() + after_ms / 1000.0
            self.due[instance.id] = (deadline, instance, target)
            self.next_deadline = min(self.next_deadline, deadline)

    def cancel(self, instance: Any) -> None:
        with self.lock:
            self.due.pop(instance.id, None)

    def advance(self) -> None:
        now = time.monotonic()
        if now < self.next_deadline:
            return
        with self.lock:
            for instance_id, (deadline, instance, target) in list(self.due.items()):
                if deadline <= now:
                    del self.due[instance_id]
                    finish(instance, target)
                    self.changed()
            self.next_deadline = min((d for d, _, _ in self.due.values()), default=float("inf"))


LIFECYCLE = Lifecycle()


def set_state(instance: Any, name: str) -> None:
    instance._state.name = name
    instance._state.code = STATE_CODES[name]


def finish(instance: Any, target: str) -> None:
    if target in (VOLUME_ATTACHED, VOLUME_DETACHED):
        finish_attachment(instance, target)
        return
    if target in (NOTICE, RECLAIM):
        reclaim_due(instance, target)
        return
    set_state(instance, target)
    if target == "running":
        show_public_ips(instance)
        RECLAIMS.arm(instance)
    else:  # stopped or terminated: the instance gives its auto-assigned addresses back
        for nic in instance.nics.values():
            release_nic_address(nic)
        instance_left_host(instance)


def timing_ms(instance: Any, key: str) -> int:
    return TIMING.get(getattr(instance, "_flotilla_scope", ANY))[key]


def begin_pending(instance: Any) -> None:
    delay = timing_ms(instance, "pending_ms")
    if delay > 0:
        set_state(instance, "pending")
        hide_public_ips(instance)
        LIFECYCLE.schedule(instance, delay, "running")
    else:
        LIFECYCLE.cancel(instance)
        RECLAIMS.arm(instance)
    LIFECYCLE.changed()


def wind_down(
    original: Callable[[Instance], Any], passing: str, final: str
) -> Callable[[Instance], Any]:
    """Wraps Instance.stop/terminate: moto ends in `final` at once; this passes `passing` first."""

    def wrapped(self: Any) -> Any:
        if self._state.name == final:
            return original(self)
        if self._state.name == passing:
            return copy.copy(self._state)
        shown = visible_public_ips(self)
        previous = original(self)  # moto clears the public IPs and sets `final`
        delay = timing_ms(self, "shutting_down_ms")
        if delay > 0:
            set_state(self, passing)
            for nic, address in shown:  # still visible while shutting down, as on AWS
                nic.public_ip = address
            LIFECYCLE.schedule(self, delay, final)
        else:
            LIFECYCLE.cancel(self)
            finish(self, final)
        LIFECYCLE.changed()
        return previous

    return wrapped


original_start = Instance.start


def instance_start(self: Any) -> Any:
    previous = original_start(self)  # moto assigns new public IPs and says running
    begin_pending(self)
    return previous


original_run_instances = InstanceBackend.run_instances
CURRENT = threading.local()


class InsufficientFreeAddresses(EC2ClientError):
    def __init__(self, subnet_id: str) -> None:
        super().__init__(
            "InsufficientFreeAddressesInSubnet",
            f"There are not enough free addresses in subnet '{subnet_id}' to satisfy the"
            " requested number of instances.",
        )


def launch_subnet(backend: Any, kwargs: dict[str, Any]) -> Any:
    """The subnet a launch takes its private addresses from, if it names one."""
    subnet_id = kwargs.get("subnet_id") or next(
        (
            nic.get("SubnetId")
            for nic in kwargs.get("nics") or []
            if int(nic.get("DeviceIndex", 0)) == 0
        ),
        None,
    )
    if not subnet_id:
        return None
    with contextlib.suppress(Exception):  # an unknown subnet: moto answers that itself
        return backend.get_subnet(subnet_id)
    return None


def free_addresses(subnet: Any) -> int:
    return max(0, subnet.available_ip_address_count)


def run_instances(
    self: Any, image_id: str, count: int, user_data: Any, security_group_names: Any, **kwargs: Any
) -> Any:
    # moto fails with a KeyError (HTTP 500) when a subnet runs out of addresses; AWS refuses.
    subnet = launch_subnet(self, kwargs)
    if subnet is not None and count > free_addresses(subnet):
        raise InsufficientFreeAddresses(subnet.id)
    host = check_host_launch(self, kwargs, count)
    CURRENT.block_devices = launch_block_devices(self, kwargs)
    try:
        reservation = original_run_instances(
            self, image_id, count, user_data, security_group_names, **kwargs
        )
    finally:
        CURRENT.block_devices = {}
    # moto associates the instance profile with the first instance of a reservation only, and
    # never the launch template's (AWS launches with it when the call names none).
    name, arn = kwargs.get("iam_instance_profile_name"), kwargs.get("iam_instance_profile_arn")
    first = 1
    if not (name or arn) and kwargs.get("launch_template"):
        with contextlib.suppress(Exception):  # an unknown template: moto answered that already
            template = self._get_template_from_args(kwargs["launch_template"]).data
            profile = template.get("IamInstanceProfile") or {}
            name, arn, first = profile.get("Name"), profile.get("Arn"), 0
    for instance in reservation.instances[first:] if (name or arn) else []:
        self.associate_iam_instance_profile(
            instance.id, iam_instance_profile_name=name, iam_instance_profile_arn=arn
        )
    launched: list[Any] = reservation.instances
    for instance in launched:
        instance._flotilla_scope = getattr(CURRENT, "scope", "-")
        if host is not None:
            place_on_host(host, instance)
        begin_pending(instance)
    return reservation


# --- Dedicated hosts: capacity per zone, instances on hosts, the Mac 24 h rule, scrubbing --------

# A Mac host cannot be released before it has been allocated this long (AWS's minimum allocation
# period for Mac instances).
MAC_MINIMUM_ALLOCATION_S = 24 * 3600
# The Unsuccessful item's code for a Mac host released inside its minimum allocation period.
# ReleaseHosts' refusals are `Client.InvalidHost…` codes (`Client.InvalidHost.Occupied` is
# AWS's for a host with instances); AWS's documentation does not spell out the one for this
# refusal, so the emulator names it in the same family. flotilla reads any Unsuccessful item
# as "not released" and does not depend on the code.
MAC_TOO_YOUNG_CODE = "Client.InvalidHost.MinimumAllocationPeriod"
HOST_OCCUPIED_CODE = "Client.InvalidHost.Occupied"
HOST_NOT_FOUND_CODE = "Client.InvalidHostID.NotFound"
CLOCK_DEFAULT = {"offset_ms": 0}
CLOCK = Scoped(CLOCK_DEFAULT)


class HostCapacity:
    """The most hosts (not released) a scope may hold per zone; zones not named are unlimited."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_scope: dict[str, dict[str, int]] = {}

    def limit(self, scope: str, zone: str) -> int | None:
        with self.lock:
            for key in (scope, ANY):
                if zone in self.by_scope.get(key, {}):
                    return self.by_scope[key][zone]
        return None

    def get(self, scope: str) -> dict[str, int]:
        with self.lock:
            return dict(self.by_scope.get(scope, {}))

    def set(self, scope: str, zones: dict[str, int] | None) -> None:
        with self.lock:
            if zones is None:
                self.by_scope.pop(scope, None)
            else:
                self.by_scope[scope] = dict(zones)


HOST_CAPACITY = HostCapacity()


def emulated_now(scope: str) -> float:
    """The scope's clock, in Unix seconds: real time plus the offset a test advanced it by."""
    return time.time() + CLOCK.get(scope)["offset_ms"] / 1000.0


def is_mac(instance_type: str | None) -> bool:
    return bool(instance_type) and str(instance_type).startswith("mac")


def host_scope(host: Any) -> str:
    return getattr(host, "_flotilla_scope", ANY)


def host_instances(host: Any) -> list[Any]:
    """The instances on a host that are not stopped or terminated (they hold the host)."""
    live = ("pending", "running", "stopping", "shutting-down")
    return [i for i in getattr(host, "_flotilla_instances", []) if i._state.name in live]


def host_instance_list(self: Any) -> list[dict[str, str]]:
    """DescribeHosts' `Instances` (moto has none)."""
    return [
        {"InstanceId": i.id, "InstanceType": i.instance_type, "OwnerId": self.owner_id}
        for i in host_instances(self)
    ]


def host_filter_value(self: Any, filter_name: str, method_name: str | None = None) -> Any:
    """moto's Host answers no `tag:` filter; the tags are matched as on every tagged resource."""
    if filter_name.startswith("tag:") or filter_name in ("tag-key", "tag-value"):
        return TaggedEC2Resource.get_filter_value(self, filter_name, method_name)
    if filter_name == "host-reservation-id":
        return None
    return ORIGINAL_HOST_FILTER_VALUE(self, filter_name, method_name)


ORIGINAL_HOST_FILTER_VALUE = Host.get_filter_value
ORIGINAL_ALLOCATE_HOSTS = HostsResponse.allocate_hosts


class HostError(EC2ClientError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)


def allocate_hosts_response(self: Any) -> ActionResult:
    """AllocateHosts with its ClientToken (the same token answers the same hosts), the scope's
    capacity per zone (`InsufficientHostCapacity` beyond it) and the scope's clock as the
    allocation time."""
    token = self._get_param("ClientToken")
    backend = self.ec2_backend
    tokens: dict[str, list[str]] = backend.__dict__.setdefault("_flotilla_host_tokens", {})
    if token and token in tokens:
        return ActionResult({"HostIds": tokens[token]})
    scope = getattr(CURRENT, "scope", ANY)
    zone = self._get_param("AvailabilityZone")
    quantity = self._get_int_param("Quantity") or 1
    limit = HOST_CAPACITY.limit(scope, zone)
    if limit is not None:
        held = sum(
            1
            for host in backend.hosts.values()
            if host.zone == zone and host.state != "released" and host_scope(host) == scope
        )
        if held + quantity > limit:
            code = "InsufficientHostCapacity"
            raise HostError(code, KNOWN_ERRORS[code][1])
    answer = ORIGINAL_ALLOCATE_HOSTS(self)
    host_ids = list(answer.result["HostIds"])  # type: ignore[index]
    now = emulated_now(scope)
    for host_id in host_ids:
        host = backend.hosts[host_id]
        host._flotilla_scope = scope
        host._flotilla_instances = []
        host._flotilla_scrub_due = None
        host.allocation_time = now
    if token:
        tokens[token] = host_ids
    return answer


def release_hosts_response(self: Any) -> ActionResult:
    """ReleaseHosts as AWS answers it, host by host: an unknown id, a host with instances and a
    Mac host inside its minimum allocation period are Unsuccessful items, the others released."""
    successful: list[str] = []
    unsuccessful: list[dict[str, Any]] = []

    def refuse(host_id: str, code: str, message: str) -> None:
        item = {"ResourceId": host_id, "Error": {"Code": code, "Message": message}}
        unsuccessful.append(item)

    for host_id in self._get_param("HostIds", []):
        host = self.ec2_backend.hosts.get(host_id)
        if host is None:
            refuse(host_id, HOST_NOT_FOUND_CODE, f"The dedicated host ID '{host_id}' is invalid.")
            continue
        if host.state == "released":
            successful.append(host_id)
            continue
        if host_instances(host):
            message = f"Dedicated host '{host_id}' cannot be released as it is occupied."
            refuse(host_id, HOST_OCCUPIED_CODE, message)
            continue
        releasable_at = host.allocation_time + MAC_MINIMUM_ALLOCATION_S
        if is_mac(host.instance_type) and emulated_now(host_scope(host)) < releasable_at:
            when = datetime.datetime.fromtimestamp(releasable_at, datetime.timezone.utc)
            message = (
                f"Dedicated host '{host_id}' cannot be released before its minimum allocation"
                f" period of 24 hours ends ({when.strftime('%Y-%m-%dT%H:%M:%SZ')})."
            )
            refuse(host_id, MAC_TOO_YOUNG_CODE, message)
            continue
        host.release()
        host._flotilla_scrub_due = None
        successful.append(host_id)
    return ActionResult({"Successful": successful, "Unsuccessful": unsuccessful})


def check_host_launch(backend: Any, kwargs: dict[str, Any], count: int) -> Any:
    """The host a RunInstances with `Placement.HostId` lands on, refused as AWS refuses it: an
    unknown or released host, a host not `available` (scrubbing), a host of another type, a
    `.metal` host that already runs its one instance. moto stores any HostId and checks none."""
    host_id = kwargs.get("placement_hostid")
    if not host_id:
        return None
    host = backend.hosts.get(host_id)
    if host is None or host.state == "released":
        raise HostError("InvalidHostID.NotFound", f"The host ID '{host_id}' does not exist")
    instance_type = kwargs.get("instance_type") or "m1.small"
    if host.instance_type and host.instance_type != instance_type:
        raise HostError(
            "InvalidParameterValue",
            f"The instance type {instance_type} does not match the host's {host.instance_type}.",
        )
    one_per_host = host.instance_type and str(host.instance_type).endswith(".metal")
    if host.state != "available" or (one_per_host and len(host_instances(host)) + count > 1):
        raise HostError(
            "InsufficientCapacityOnHost",
            "There is not enough capacity on the Dedicated Host to launch or start the instance.",
        )
    return host


def place_on_host(host: Any, instance: Any) -> None:
    instance.placement.tenancy = "host"
    instance.tenancy = "host"
    instance._flotilla_host = host
    host.__dict__.setdefault("_flotilla_instances", []).append(instance)


def instance_left_host(instance: Any) -> None:
    """A Mac host scrubs after its instance stops or terminates: `pending` for the scope's
    `host_scrub_ms` of its clock, then `available`. Other hosts are free again at once."""
    host = getattr(instance, "_flotilla_host", None)
    if host is None or host.state == "released" or host_instances(host):
        return
    if not is_mac(host.instance_type):
        return
    scrub_ms = TIMING.get(host_scope(host))["host_scrub_ms"]
    if scrub_ms <= 0:
        return
    host.state = "pending"
    host._flotilla_scrub_due = emulated_now(host_scope(host)) + scrub_ms / 1000.0


def all_hosts() -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    for account_id, regions in list(ec2_backends.items()):
        for region, backend in list(regions.items()):
            out.extend((account_id, region, host) for host in list(backend.hosts.values()))
    return out


def advance_hosts() -> None:
    """Scrubs whose time has come on their scope's clock end: the host is `available`."""
    for _, _, host in all_hosts():
        due = getattr(host, "_flotilla_scrub_due", None)
        if due is not None and host.state == "pending" and emulated_now(host_scope(host)) >= due:
            host.state = "available"
            host._flotilla_scrub_due = None


def describe_host(account_id: str, region: str, host: Any) -> dict[str, Any]:
    return {
        "id": host.id,
        "account_id": account_id,
        "region": region,
        "scope": host_scope(host),
        "state": host.state,
        "availability_zone": host.zone,
        "instance_type": host.instance_type,
        "allocation_time": host.allocation_time,
        "instances": [i.id for i in host_instances(host)],
        "scrub_due": getattr(host, "_flotilla_scrub_due", None),
        "tags": {t["key"]: t["value"] for t in host.get_tags()},
    }


def list_hosts(scope: str | None) -> list[dict[str, Any]]:
    return [
        describe_host(account_id, region, host)
        for account_id, region, host in all_hosts()
        if scope is None or host_scope(host) == scope
    ]


# --- Spot reclaim: a notice in the instance's IMDS, then termination ----------------------------

# EC2's StateReason of a reclaimed spot instance.
SPOT_RECLAIM_CODE = "Server.SpotInstanceTermination"
SPOT_RECLAIM_MESSAGE = "Server.SpotInstanceTermination: Spot instance termination"
# AWS warns two minutes ahead.
SPOT_WARNING_MS = 120_000
# LIFECYCLE targets: when a random reclaim gives notice, and when a noticed instance goes.
NOTICE, RECLAIM = "spot-notice", "spot-reclaim"


@dataclass
class ReclaimSetting:
    """A scope's random reclaims: each of its running spot instances is interrupted within a
    minute with `probability_per_minute` (a memoryless draw: its notice comes after an
    exponential time with that rate), from a `seed`ed generator, so the same launches in the
    same order draw the same times; `delay_ms` from notice to termination (also the default of
    explicit reclaims of the scope's instances)."""

    probability_per_minute: float = 0.0
    seed: int | None = None
    delay_ms: int = SPOT_WARNING_MS
    draws: random.Random | None = None

    @staticmethod
    def parse(value: Any) -> ReclaimSetting:
        obj = expect_object(value, {"probability_per_minute", "seed", "delay_ms"}, "spot-reclaim")
        p = obj.get("probability_per_minute", 0.0)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise BadRequest(f"`probability_per_minute` must be a number in 0..1, not {p!r}")
        seed = obj.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise BadRequest(f"`seed` must be an integer or null, not {seed!r}")
        delay = non_negative_ints(
            {"delay_ms": obj.get("delay_ms", SPOT_WARNING_MS)}, {"delay_ms"}, "spot-reclaim"
        )
        return ReclaimSetting(float(p), seed, delay["delay_ms"], random.Random(seed))

    def to_json(self) -> dict[str, Any]:
        return {
            "probability_per_minute": self.probability_per_minute,
            "seed": self.seed,
            "delay_ms": self.delay_ms,
        }

    def draw_ms(self) -> int:
        """Milliseconds until the next notice: exponential with rate -ln(1 - p) per minute, so
        one comes within a minute with probability p (p = 1: at once)."""
        if self.probability_per_minute >= 1.0:
            return 0
        rate = -math.log1p(-self.probability_per_minute)
        draws = self.draws or random.Random(self.seed)
        return int(draws.expovariate(rate) * 60_000)


class Reclaims:
    """Per-scope random reclaim settings (`*`: scopes without their own)."""

    def __init__(self) -> None:
        self.settings: dict[str, ReclaimSetting] = {}

    def setting(self, scope: str) -> ReclaimSetting | None:
        return self.settings.get(scope) or self.settings.get(ANY)

    def delay_ms(self, instance: Any) -> int:
        setting = self.setting(getattr(instance, "_flotilla_scope", ANY))
        return setting.delay_ms if setting else SPOT_WARNING_MS

    def arm(self, instance: Any) -> None:
        """Plans the random notice of a spot instance that just started running."""
        setting = self.setting(getattr(instance, "_flotilla_scope", ANY))
        instance._flotilla_reclaim_after_ms = None
        if instance.lifecycle != "spot" or setting is None or setting.probability_per_minute <= 0:
            return
        if getattr(instance, "_flotilla_spot_notice", None):
            return
        after = setting.draw_ms()
        instance._flotilla_reclaim_after_ms = after
        LIFECYCLE.schedule(instance, after, NOTICE)

    def set(self, scope: str, setting: ReclaimSetting | None) -> None:
        """Replaces a scope's setting and plans again the notices of the running spot instances
        it governs, in launch order."""
        with LIFECYCLE.lock:
            if setting is None:
                self.settings.pop(scope, None)
            else:
                self.settings[scope] = setting
            governed = [
                instance
                for _, _, _, instance in all_instances()
                if instance.lifecycle == "spot"
                and instance._state.name == "running"
                and self.governs(scope, getattr(instance, "_flotilla_scope", ANY))
            ]
            governed.sort(key=lambda i: (i.launch_time, i.ami_launch_index, i.id))
            for instance in governed:
                due = LIFECYCLE.due.get(instance.id)
                if due is not None and due[2] == NOTICE:
                    LIFECYCLE.cancel(instance)
                if instance.id not in LIFECYCLE.due:
                    self.arm(instance)
            LIFECYCLE.changed()

    def governs(self, scope: str, instance_scope: str) -> bool:
        return instance_scope == scope or (scope == ANY and instance_scope not in self.settings)


RECLAIMS = Reclaims()


def give_notice(instance: Any, delay_ms: int) -> None:
    """`spot/instance-action` says terminate at now + delay; the instance goes then."""
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(milliseconds=delay_ms)
    instance._flotilla_spot_notice = {
        "action": "terminate",
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    LIFECYCLE.schedule(instance, delay_ms, RECLAIM)
    LIFECYCLE.changed()


def reclaim_due(instance: Any, target: str) -> None:
    """A reclaim's step came due (LIFECYCLE): the random notice, or the termination."""
    if instance._state.name not in ("pending", "running"):
        return
    if target == NOTICE:
        give_notice(instance, RECLAIMS.delay_ms(instance))
        return
    instance.terminate()  # wind_down's: shutting-down first when the scope says so
    instance._reason = SPOT_RECLAIM_MESSAGE
    instance.state_reason = StateReason(SPOT_RECLAIM_MESSAGE, SPOT_RECLAIM_CODE)


def reclaim(body: Any) -> tuple[int, Any]:
    """`POST /_flotilla/instances/reclaim`: interrupts the given spot instances, all or none."""
    obj = expect_object(body, {"instance_ids", "delay_ms"}, "the body")
    ids = obj.get("instance_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise BadRequest("`instance_ids` must be a non-empty list of instance ids")
    delay = obj.get("delay_ms")
    if delay is not None:
        delay = non_negative_ints({"delay_ms": delay}, {"delay_ms"}, "the body")["delay_ms"]
    with LIFECYCLE.lock:
        LIFECYCLE.advance()
        found = []
        for instance_id in ids:
            hit = find_instance(instance_id)
            if hit is None:
                return 404, {"error": f"no instance {instance_id}"}
            instance = hit[3]
            if instance.lifecycle != "spot":
                raise BadRequest(
                    f"{instance_id} is an on-demand instance: only spot instances are reclaimed"
                )
            if instance._state.name not in ("pending", "running") and not getattr(
                instance, "_flotilla_spot_notice", None
            ):
                raise BadRequest(
                    f"{instance_id} is {instance._state.name}: only a pending or running spot"
                    " instance is reclaimed"
                )
            found.append(hit)
        for _, _, _, instance in found:
            if not getattr(instance, "_flotilla_spot_notice", None):
                give_notice(instance, RECLAIMS.delay_ms(instance) if delay is None else delay)
        return 200, {"instances": [describe(*hit) for hit in found]}


def all_instances() -> list[tuple[str, str, Any, Any]]:
    """(account, region, backend, instance) of every instance."""
    return [
        (account_id, region, backend, instance)
        for account_id, regions in list(ec2_backends.items())
        for region, backend in list(regions.items())
        for reservation in list(backend.reservations.values())
        for instance in reservation.instances
    ]


# --- Root volumes with their IOPS and throughput ------------------------------------------------

# AWS's gp3 baseline: what DescribeVolumes reports when a launch gives no IOPS or throughput.
GP3_BASELINE_THROUGHPUT = 125
original_parse_block_device_mapping = InstanceResponse._parse_block_device_mapping


def parse_block_device_mapping(self: Any) -> list[dict[str, Any]]:
    """moto keeps a mapping's `Ebs.Iops` but drops `Ebs.Throughput`: keep both."""
    mappings = original_parse_block_device_mapping(self)
    given = self._get_param("BlockDeviceMappings", [])
    for mapping, request in zip(mappings, given):
        mapping["Ebs"]["Throughput"] = (request.get("Ebs") or {}).get("Throughput")
    return mappings


def launch_block_devices(backend: Any, kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each device's `Ebs` of a RunInstances call, from the call or its launch template, as
    moto's run_instances picks them."""
    mappings = kwargs.get("block_device_mappings")
    if mappings is None and kwargs.get("launch_template"):
        with contextlib.suppress(Exception):  # an unknown template: moto answers that itself
            template = backend._get_template_from_args(kwargs["launch_template"])
            mappings = template.data.get("BlockDeviceMappings")
    return {
        mapping["DeviceName"]: mapping.get("Ebs") or {}
        for mapping in mappings or []
        if mapping.get("DeviceName")
    }


def add_block_device(
    self: Any,
    size: int,
    device_path: str,
    snapshot_id: str | None,
    encrypted: bool,
    delete_on_termination: bool,
    kms_key_id: str | None,
    volume_type: str | None,
) -> None:
    """moto's, with the mapping's IOPS and throughput: without them it creates the volume
    with none, and then refuses io1 and io2 (which need IOPS)."""
    ebs = getattr(CURRENT, "block_devices", {}).get(device_path, {})
    throughput = ebs.get("Throughput")
    if volume_type == "gp3" and not throughput:
        throughput = GP3_BASELINE_THROUGHPUT
    volume = self.ec2_backend.create_volume(
        size=size,
        zone_name=self._placement.zone,
        snapshot_id=snapshot_id,
        encrypted=encrypted,
        kms_key_id=kms_key_id,
        volume_type=volume_type,
        iops=ebs.get("Iops"),
        throughput=throughput,
    )
    self.ec2_backend.attach_volume(volume.id, self.id, device_path, delete_on_termination)


# --- EBS attachments with EC2's checks and timing ------------------------------------------------

VOLUME_ATTACHED, VOLUME_DETACHED = "volume-attached", "volume-detached"
original_attach_volume_response = ElasticBlockStore.attach_volume
original_detach_volume_response = ElasticBlockStore.detach_volume


def current_timing_ms(key: str) -> int:
    return TIMING.get(getattr(CURRENT, "scope", ANY))[key]


def check_attachable(volume: Any, instance: Any, device: str) -> None:
    """What EC2 refuses and moto accepts: a volume attached anywhere (moto moves it), a volume
    of another zone, a device the instance already uses, an instance that is gone."""
    if volume.attachment is not None:
        raise VolumeInUseError(volume.id, volume.attachment.instance.id)
    if instance._state.name not in ("running", "stopped", "pending", "stopping"):
        raise EC2ClientError(
            "IncorrectInstanceState",
            f"The instance '{instance.id}' is not in a state from which it can be attached to a volume "
            f"({instance._state.name})",
        )
    zone = volume.zone.name if volume.zone else None
    if zone and instance.availability_zone and zone != instance.availability_zone:
        raise EC2ClientError(
            "InvalidVolume.ZoneMismatch",
            f"The volume '{volume.id}' is not in the same availability zone as instance "
            f"'{instance.id}'",
        )
    if device in instance.block_device_mapping:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Invalid value '{device}' for unixDevice. Attachment point {device} is already in use",
        )


def attach_volume_response(self: Any) -> Any:
    volume = self.ec2_backend.get_volume(self._get_param("VolumeId"))
    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    check_attachable(volume, instance, self._get_param("Device"))
    answer = original_attach_volume_response(self)
    delay = current_timing_ms("attach_ms")
    if delay > 0 and volume.attachment is not None:
        volume.attachment.status = "attaching"
        LIFECYCLE.schedule(volume, delay, VOLUME_ATTACHED)
    return answer


def detach_volume_response(self: Any) -> Any:
    """`detaching` for the scope's `detach_ms`, then moto's detach (the volume `available`)."""
    volume = self.ec2_backend.get_volume(self._get_param("VolumeId"))
    attachment = volume.attachment
    delay = current_timing_ms("detach_ms")
    if attachment is None or (delay == 0 and attachment.status != "detaching"):
        return original_detach_volume_response(self)
    instance_id = self._get_param("InstanceId")
    device = self._get_param("Device")
    if (instance_id and instance_id != attachment.instance.id) or (
        device and device != attachment.device
    ):
        raise InvalidVolumeDetachmentError(volume.id, instance_id or "", device or "")
    if attachment.status != "detaching":
        attachment.status = "detaching"
        LIFECYCLE.schedule(volume, delay, VOLUME_DETACHED)
    return ActionResult(
        {
            "VolumeId": volume.id,
            "InstanceId": attachment.instance.id,
            "Device": attachment.device,
            "State": "detaching",
            "AttachTime": attachment.attach_time,
        }
    )


def finish_attachment(volume: Any, target: str) -> None:
    attachment = volume.attachment
    if attachment is None:
        return
    if target == VOLUME_ATTACHED:
        if attachment.status == "attaching":
            attachment.status = "attached"
        return
    with contextlib.suppress(EC2ClientError):  # detached meanwhile
        volume.ec2_backend.detach_volume(volume.id, attachment.instance.id, attachment.device)


def teardown_defaults(self: Any) -> None:
    """moto detaches every volume of a terminated instance at once; EC2 keeps the ones not
    deleted with it attached a while: here the scope's `volume_release_ms`."""
    delay = timing_ms(self, "volume_release_ms")
    for device_path, mapping in list(self.block_device_mapping.items()):
        if delay > 0 and not mapping.delete_on_termination:
            volume = self.ec2_backend.volumes.get(mapping.volume_id)
            if volume is not None and volume.attachment is not None:
                LIFECYCLE.schedule(volume, delay, VOLUME_DETACHED)
                continue
        with contextlib.suppress(EC2ClientError):
            self.ec2_backend.detach_volume(mapping.volume_id, self.id, device_path)
        if mapping.delete_on_termination:
            with contextlib.suppress(EC2ClientError):
                self.ec2_backend.delete_volume(mapping.volume_id)


def attachments(backend: Any, instance: Any) -> list[dict[str, Any]]:
    """The instance's volumes as the booter needs them: id, device, attachment state, size."""
    out = []
    for device, mapping in instance.get_block_device_mapping:
        volume = backend.volumes.get(mapping.volume_id)
        attachment = volume.attachment if volume is not None else None
        attached_here = attachment is not None and attachment.instance is instance
        out.append(
            {
                "volume_id": mapping.volume_id,
                "device": device,
                "state": attachment.status if attached_here else "detached",
                "size_gib": int(volume.size) if volume is not None else 0,
            }
        )
    return out


# --- RegisterImage with what AWS keeps ----------------------------------------------------------


def register_image(self: Any) -> ActionResult:
    """moto's keeps only Name and Description: every registered image is an x86_64 image without
    tags whose root device is /dev/sda1. Keep the architecture, the root device name, the
    virtualization type and the image's TagSpecifications, as AWS does (AWS's default
    architecture is x86_64)."""
    self.error_on_dryrun()
    image = self.ec2_backend.register_image(
        self._get_param("Name"), self._get_param("Description", "")
    )
    image.architecture = self._get_param("Architecture") or "x86_64"
    image.root_device_name = self._get_param("RootDeviceName") or image.root_device_name
    image.root_device_type = "ebs"
    image.virtualization_type = self._get_param("VirtualizationType") or "hvm"
    tags = self._parse_tag_specification().get("image", {})
    if tags:
        self.ec2_backend.create_tags([image.id], tags)
    return ActionResult({"ImageId": image.id})


def list_instance_profile_tags(self: Any) -> ActionResult:
    """moto stores an instance profile's tags (CreateInstanceProfile, TagInstanceProfile) but
    does not serve ListInstanceProfileTags: answer it, all in one page."""
    profile = self.backend.get_instance_profile(self._get_param("InstanceProfileName"))
    tags = [{"Key": t["Key"], "Value": t["Value"]} for t in profile.tags or []]
    return ActionResult({"Tags": tags, "IsTruncated": False})


# --- CreateImage and CopyImage with what AWS keeps ---------------------------------------------

# ClientToken of a CopyImage → the image it made, per (account, region): a repeated request
# answers the first copy, as AWS does.
COPY_IMAGE_TOKENS: dict[tuple[str, str, str], str] = {}


def create_image(self: Any) -> ActionResult:
    """moto's refuses a TagSpecification for snapshots (NotImplementedError): tag the image and
    its snapshot, as AWS does."""
    self.error_on_dryrun()
    tags = self._parse_tag_specification()
    image = self.ec2_backend.create_image(
        self._get_param("InstanceId"),
        self._get_param("Name"),
        self._get_param("Description", ""),
        tag_specifications=[],
    )
    if tags.get("image"):
        self.ec2_backend.create_tags([image.id], tags["image"])
    if tags.get("snapshot"):
        self.ec2_backend.create_tags([image.ebs_snapshot.id], tags["snapshot"])
    return ActionResult({"ImageId": image.id})


def copy_image(self: Any) -> ActionResult:
    """moto's drops Encrypted, KmsKeyId, TagSpecifications and ClientToken. Keep them: the copy's
    snapshot is encrypted with the key asked (EBS's default key without one), the image and its
    snapshot are tagged, and a repeated ClientToken answers the first copy's id."""
    self.error_on_dryrun()
    token = self._get_param("ClientToken")
    key = (self.ec2_backend.account_id, self.region, token or "")
    if token and key in COPY_IMAGE_TOKENS:
        return ActionResult({"ImageId": COPY_IMAGE_TOKENS[key]})
    image = self.ec2_backend.copy_image(
        self._get_param("SourceImageId"),
        self._get_param("SourceRegion"),
        self._get_param("Name"),
        self._get_param("Description"),
    )
    if self._get_bool_param("Encrypted", False):
        image.ebs_snapshot.encrypted = True
        image.ebs_snapshot.kms_key_id = self._get_param("KmsKeyId") or "alias/aws/ebs"
    tags = self._parse_tag_specification()
    if tags.get("image"):
        self.ec2_backend.create_tags([image.id], tags["image"])
    if tags.get("snapshot"):
        self.ec2_backend.create_tags([image.ebs_snapshot.id], tags["snapshot"])
    if token:
        COPY_IMAGE_TOKENS[key] = image.id
    return ActionResult({"ImageId": image.id})


def ami_block_device_mappings(self: Any) -> list[dict[str, Any]]:
    """moto's leaves out whether the image's snapshot is encrypted, and with which key."""
    ebs: dict[str, Any] = {
        "SnapshotId": self.ebs_snapshot.id,
        "VolumeSize": 15,
        "DeleteOnTermination": False,
        "VolumeType": "standard",
        "Encrypted": bool(self.ebs_snapshot.encrypted),
    }
    if self.ebs_snapshot.kms_key_id:
        ebs["KmsKeyId"] = self.ebs_snapshot.kms_key_id
    return [{"DeviceName": self.root_device_name, "Ebs": ebs}]


# --- Dependency checks moto skips ---------------------------------------------------------------


def live_instances(backend: Any) -> list[Instance]:
    return [
        instance
        for reservation in list(backend.reservations.values())
        for instance in reservation.instances
        if instance._state.name != "terminated"
    ]


def instance_group_ids(instance: Any) -> set[str]:
    groups = list(instance.security_groups)
    for nic in instance.nics.values():
        groups.extend(nic.group_set)
    return {getattr(group, "id", group) for group in groups}


original_delete_subnet = SubnetBackend.delete_subnet


def delete_subnet(self: Any, subnet_id: str) -> Any:
    for instance in live_instances(self):
        subnets = {instance.subnet_id} | {nic.subnet.id for nic in instance.nics.values()}
        if subnet_id in subnets:
            raise DependencyViolationError(
                f"The subnet '{subnet_id}' has dependencies and cannot be deleted."
            )
    return original_delete_subnet(self, subnet_id)


original_delete_security_group = SecurityGroupBackend.delete_security_group


def delete_security_group(self: Any, name: str | None = None, group_id: str | None = None) -> Any:
    group = (
        self.get_security_group_from_id(group_id)
        if group_id
        else self.get_security_group_by_name_or_id(name)
    )
    if group is not None:
        if any(group.id in instance_group_ids(instance) for instance in live_instances(self)):
            raise DependencyViolationError(f"resource {group.id} has a dependent object")
        for groups in list(self.groups.values()):
            for other in list(groups.values()):
                if other.id != group.id and any(
                    references(rule.source_group, group)
                    for rule in other.ingress_rules + other.egress_rules
                ):
                    raise DependencyViolationError(f"resource {group.id} has a dependent object")
    return original_delete_security_group(self, name=name, group_id=group_id)


def references(source: dict[str, str], group: Any) -> bool:
    return bool(source) and (
        source.get("GroupId") == group.id
        or (source.get("GroupName") == group.name and "GroupId" not in source)
    )


original_delete_vpc = VPCBackend.delete_vpc


def delete_vpc(self: Any, vpc_id: str) -> Any:
    if any(instance.vpc_id == vpc_id for instance in live_instances(self)):
        raise DependencyViolationError(
            f"The vpc '{vpc_id}' has dependencies and cannot be deleted."
        )
    for pcx in list(self.vpc_pcxs.values()):
        if vpc_id in (pcx.vpc.id, pcx.peer_vpc.id) and pcx._status.code in (
            "active",
            "pending-acceptance",
        ):
            raise DependencyViolationError(
                f"The vpc '{vpc_id}' has dependencies and cannot be deleted."
            )
    return original_delete_vpc(self, vpc_id)


# States in which a peering connection carries no traffic: routes to it are black holes.
DEAD_PEERING = ("deleted", "rejected", "failed", "expired")


def route_state(self: Any) -> str:
    """`blackhole` when the route's target is gone, as AWS reports it; else `active`."""
    peering = self.vpc_pcx
    if peering is not None and peering._status.code in DEAD_PEERING:
        return "blackhole"
    gateway = self.gateway
    if gateway is not None and gateway.id.startswith("igw-"):
        backend = self.route_table.ec2_backend
        attached = getattr(backend.internet_gateways.get(gateway.id), "vpc", None)
        if attached is None or attached.id != self.route_table.vpc_id:
            return "blackhole"
    return "active"


def install_patches() -> None:
    patches: list[tuple[Any, str, Any]] = [
        (NetworkInterface, "check_auto_public_ip", nic_check_auto_public_ip),
        (moto_eips, "random_ip", eip_address),
        (ElasticAddressBackend, "release_address", release_address),
        (Instance, "start", instance_start),
        (Instance, "stop", wind_down(Instance.stop, "stopping", "stopped")),
        (Instance, "terminate", wind_down(Instance.terminate, "shutting-down", "terminated")),
        (InstanceBackend, "run_instances", run_instances),
        (InstanceResponse, "_parse_block_device_mapping", parse_block_device_mapping),
        (Instance, "add_block_device", add_block_device),
        (Instance, "teardown_defaults", teardown_defaults),
        (ElasticBlockStore, "attach_volume", attach_volume_response),
        (ElasticBlockStore, "detach_volume", detach_volume_response),
        (SubnetBackend, "delete_subnet", delete_subnet),
        (SecurityGroupBackend, "delete_security_group", delete_security_group),
        (VPCBackend, "delete_vpc", delete_vpc),
        (Route, "state", property(route_state)),
        (SpotInstances, "describe_spot_price_history", describe_spot_price_history),
        (FleetsBackend, "create_fleet", create_fleet),
        (Fleet, "instances", property(fleet_instances)),
        (Fleets, "create_fleet", create_fleet_response),
        (AmisResponse, "register_image", register_image),
        (IamResponse, "list_instance_profile_tags", list_instance_profile_tags),
        (AmisResponse, "create_image", create_image),
        (AmisResponse, "copy_image", copy_image),
        (Ami, "block_device_mappings", property(ami_block_device_mappings)),
        (HostsResponse, "allocate_hosts", allocate_hosts_response),
        (HostsResponse, "release_hosts", release_hosts_response),
        (Host, "get_filter_value", host_filter_value),
        (Host, "instances", property(host_instance_list)),
    ]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)


# --- Tables from the Rust side: on-demand prices and EC2's throttling buckets --------------------


class Tables:
    """The numbers the client computes with, handed over by `up` once moto answers
    (`GET /_flotilla/catalogue` tells it moto's EC2 actions and regions, `PUT /_flotilla/tables`
    brings them back with flotilla-capacity's numbers), so the emulator models exactly what the
    client expects rather than a copy that could drift:

    - `prices`: `{"date", "us_east_1": {type: USD per hour}, "region_factors": {region: f}}`,
      flotilla-capacity's built-in table and `region_factor` for every region moto knows;
    - `throttle`: `{"classes": {class: {"capacity", "refill_per_second"}}, "actions": {Action:
      {"unfiltered": class, "filtered": class}}, "instances": {Action: {"capacity",
      "refill_per_second"}}}`, flotilla-capacity's `ActionClass` of every EC2 action and its
      request and instance buckets.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded = False
        self.date = ""
        self.us_east_1: dict[str, float] = {}
        self.region_factors: dict[str, float] = {}
        self.classes: dict[str, tuple[float, float]] = {}
        self.actions: dict[str, tuple[str, str]] = {}
        self.instances: dict[str, tuple[float, float]] = {}

    def load(self, body: Any) -> dict[str, Any]:
        obj = expect_object(body, {"prices", "throttle"}, "the tables")
        prices = expect_object(
            obj.get("prices"), {"date", "us_east_1", "region_factors"}, "`prices`"
        )
        throttle = expect_object(
            obj.get("throttle"), {"classes", "actions", "instances"}, "`throttle`"
        )
        us_east_1 = numbers(prices.get("us_east_1"), "`prices.us_east_1`")
        factors = numbers(prices.get("region_factors"), "`prices.region_factors`")
        classes = {
            name: bucket(value, f"`throttle.classes.{name}`")
            for name, value in expect_mapping(throttle.get("classes"), "`throttle.classes`").items()
        }
        instances = {
            name: bucket(value, f"`throttle.instances.{name}`")
            for name, value in expect_mapping(
                throttle.get("instances"), "`throttle.instances`"
            ).items()
        }
        actions: dict[str, tuple[str, str]] = {}
        for name, value in expect_mapping(throttle.get("actions"), "`throttle.actions`").items():
            pair = expect_object(value, {"unfiltered", "filtered"}, f"`throttle.actions.{name}`")
            if pair.get("unfiltered") not in classes or pair.get("filtered") not in classes:
                raise BadRequest(
                    f"`throttle.actions.{name}` names a class not in `throttle.classes`"
                )
            actions[name] = (pair["unfiltered"], pair["filtered"])
        with self.lock:
            self.date = str(prices.get("date") or "")
            self.us_east_1, self.region_factors = us_east_1, factors
            self.classes, self.actions, self.instances = classes, actions, instances
            self.loaded = True
        return self.summary()

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "loaded": self.loaded,
                "price_date": self.date,
                "instance_types": len(self.us_east_1),
                "regions": len(self.region_factors),
                "actions": len(self.actions),
            }


def expect_mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def numbers(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values()
    ):
        raise BadRequest(f"{what} must be an object of non-negative numbers")
    return {str(k): float(v) for k, v in value.items()}


def bucket(value: Any, what: str) -> tuple[float, float]:
    obj = numbers(expect_object(value, {"capacity", "refill_per_second"}, what), what)
    if "capacity" not in obj or "refill_per_second" not in obj or obj["refill_per_second"] <= 0:
        raise BadRequest(f"{what} needs `capacity` and a positive `refill_per_second`")
    return obj["capacity"], obj["refill_per_second"]


TABLES = Tables()


def catalogue() -> dict[str, Any]:
    """What `up` needs to compute the tables: every EC2 action (botocore's model of the API moto
    serves) and every region moto knows."""
    from botocore.session import get_session

    model = get_session().get_service_model("ec2")
    return {
        "ec2_actions": sorted(model.operation_names),
        "regions": sorted(ec2_backends[DEFAULT_ACCOUNT_ID].regions),
    }


def round_price(price: float) -> float:
    """To 6 decimal places, half away from zero, as flotilla-capacity rounds
    (`(price * 1e6).round() / 1e6`)."""
    scaled = price * 1e6
    whole = math.floor(scaled)
    return (whole + 1 if scaled - whole >= 0.5 else whole) / 1e6


def on_demand_price(region: str, instance_type: str) -> float | None:
    """Linux, shared tenancy, USD per hour: flotilla-capacity's us-east-1 figure times the
    region's factor, rounded as it rounds (`PriceBook::on_demand` of the built-in table)."""
    with TABLES.lock:
        base = TABLES.us_east_1.get(instance_type)
        factor = TABLES.region_factors.get(region)
    if base is None or factor is None:
        return None
    return round_price(base * factor)


# The spot price of a pool is its type's on-demand price times a factor in [SPOT_LOW, SPOT_HIGH)
# drawn from a hash of zone and type: below on-demand, different per zone and type, the same in
# every run.
SPOT_LOW, SPOT_HIGH = 0.25, 0.75


def spot_factor(zone: str, instance_type: str) -> float:
    digest = hashlib.sha256(f"{zone}/{instance_type}".encode()).digest()
    return SPOT_LOW + (SPOT_HIGH - SPOT_LOW) * int.from_bytes(digest[:8], "big") / 2.0**64


def spot_price(region: str, zone: str, instance_type: str) -> float | None:
    on_demand = on_demand_price(region, instance_type)
    if on_demand is None:
        return None
    return round_price(on_demand * spot_factor(zone, instance_type))


# --- DescribeSpotPriceHistory ---------------------------------------------------------------------

# What a Linux spot price is listed as; the VPC variant only when asked for by name.
SPOT_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
SPOT_PAGE_DEFAULT = 1000


def describe_spot_price_history(self: Any) -> ActionResult:
    """One entry per zone, instance type (offered there and priced) and product description,
    with spot_price(). Prices never change, so the entry in effect at EndTime (default now) is
    the only one, dated the start of that UTC day: a client asking for the current price
    (StartTime now) gets it, as AWS answers the price in effect at StartTime. Honoured:
    InstanceTypes, AvailabilityZone, ProductDescriptions (Linux/UNIX by default), the filters
    availability-zone, instance-type, product-description, spot-price and timestamp (with `*`
    and `?`), MaxResults and NextToken."""
    region = self.region
    types = set(self._get_param("InstanceTypes", []) or [])
    zone_param = self._get_param("AvailabilityZone")
    products = list(self._get_param("ProductDescriptions", []) or [])
    filters: dict[str, list[str]] = self._filters_from_querystring()
    products += filters.get("product-description", [])
    wanted_products = [
        p for p in SPOT_PRODUCTS if not products or any(fnmatch.fnmatchcase(p, q) for q in products)
    ]
    if not products:
        wanted_products = [SPOT_PRODUCTS[0]]
    end = self._get_param("EndTime")
    moment = end if isinstance(end, datetime.datetime) else parse_timestamp(end)
    if moment is not None and moment.tzinfo is None:  # moto parses timestamps as naive UTC
        moment = moment.replace(tzinfo=datetime.UTC)
    now = datetime.datetime.now(datetime.UTC)
    moment = min(moment or now, now)
    stamp = moment.strftime("%Y-%m-%dT00:00:00.000Z")

    def allowed(name: str, value: str) -> bool:
        patterns = filters.get(name)
        return not patterns or any(fnmatch.fnmatchcase(value, p) for p in patterns)

    entries = []
    offerings = INSTANCE_TYPE_OFFERINGS["availability-zone"].get(region, [])
    for offering in sorted(offerings, key=lambda o: (o["Location"], o["InstanceType"])):
        zone, instance_type = offering["Location"], offering["InstanceType"]
        if (types and instance_type not in types) or (zone_param and zone != zone_param):
            continue
        if not allowed("availability-zone", zone) or not allowed("instance-type", instance_type):
            continue
        price = spot_price(region, zone, instance_type)
        if price is None:
            continue
        text = f"{price:.6f}"
        if not allowed("spot-price", text) or not allowed("timestamp", stamp):
            continue
        entries.extend(
            {
                "AvailabilityZone": zone,
                "InstanceType": instance_type,
                "ProductDescription": product,
                "SpotPrice": text,
                "Timestamp": stamp,
            }
            for product in wanted_products
        )
    start, size = page_bounds(self._get_param("NextToken"), self._get_param("MaxResults"))
    result: dict[str, Any] = {"SpotPriceHistory": entries[start : start + size]}
    if start + size < len(entries):
        result["NextToken"] = encode_token(start + size)
    return ActionResult(result)


def parse_timestamp(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = datetime.datetime.fromtimestamp(float(value), datetime.UTC)
        except ValueError:
            raise EC2ClientError("InvalidParameterValue", f"Invalid time: {value}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def page_bounds(token: Any, max_results: Any) -> tuple[int, int]:
    start = decode_token(token) if token else 0
    try:
        size = int(max_results) if max_results not in (None, "") else SPOT_PAGE_DEFAULT
    except ValueError:
        raise EC2ClientError(
            "InvalidParameterValue", f"Invalid MaxResults: {max_results}"
        ) from None
    if size < 1:
        raise EC2ClientError("InvalidParameterValue", "MaxResults must be positive")
    return start, size


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"flotilla:{offset}".encode()).decode()


def decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, offset = text.partition(":")
        if prefix != "flotilla":
            raise ValueError(text)
        return int(offset)
    except ValueError:
        raise EC2ClientError("InvalidPaginationToken", f"The token '{token}' is invalid.") from None


# --- The Pricing API (AWSPriceListService), which moto lacks -----------------------------------

# Per region: AWS's name in price documents (`location`) and its `usagetype` prefix; other
# regions show their code as both.
REGION_NAMES = {
    "us-east-1": ("US East (N. Virginia)", ""),
    "us-east-2": ("US East (Ohio)", "USE2-"),
    "us-west-1": ("US West (N. California)", "USW1-"),
    "us-west-2": ("US West (Oregon)", "USW2-"),
    "ca-central-1": ("Canada (Central)", "CAN1-"),
    "ca-west-1": ("Canada West (Calgary)", "CAW1-"),
    "eu-west-1": ("EU (Ireland)", "EU-"),
    "eu-west-2": ("EU (London)", "EUW2-"),
    "eu-west-3": ("EU (Paris)", "EUW3-"),
    "eu-central-1": ("EU (Frankfurt)", "EUC1-"),
    "eu-central-2": ("EU (Zurich)", "EUC2-"),
    "eu-north-1": ("EU (Stockholm)", "EUN1-"),
    "eu-south-1": ("EU (Milan)", "EUS1-"),
    "eu-south-2": ("EU (Spain)", "EUS2-"),
    "ap-south-1": ("Asia Pacific (Mumbai)", "APS3-"),
    "ap-northeast-1": ("Asia Pacific (Tokyo)", "APN1-"),
    "ap-northeast-2": ("Asia Pacific (Seoul)", "APN2-"),
    "ap-northeast-3": ("Asia Pacific (Osaka)", "APN3-"),
    "ap-southeast-1": ("Asia Pacific (Singapore)", "APS1-"),
    "ap-southeast-2": ("Asia Pacific (Sydney)", "APS2-"),
    "ap-east-1": ("Asia Pacific (Hong Kong)", "APE1-"),
    "sa-east-1": ("South America (Sao Paulo)", "SAE1-"),
    "me-south-1": ("Middle East (Bahrain)", "MES1-"),
    "af-south-1": ("Africa (Cape Town)", "AFS1-"),
}
# AWS's codes of the on-demand offer term and of its hourly price dimension.
ON_DEMAND_TERM = "JRTCKXETXF"
HOURLY_DIMENSION = "6YS6EN2CT7"
PRICING_PAGE_MAX = 100
FILTER_TYPES = ("TERM_MATCH", "EQUALS", "CONTAINS", "ANY_OF", "NONE_OF")
EC2_ATTRIBUTES = [
    "capacitystatus",
    "instanceFamily",
    "instanceType",
    "licenseModel",
    "location",
    "locationType",
    "marketoption",
    "memory",
    "operatingSystem",
    "operation",
    "preInstalledSw",
    "productFamily",
    "regionCode",
    "servicecode",
    "tenancy",
    "usagetype",
    "vcpu",
]


class PricingError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def serve_pricing(call: Call, environ: Environ, start_response: StartResponse) -> list[bytes]:
    """`AWSPriceListService.GetProducts` and `DescribeServices` (JSON 1.1), on any endpoint:
    the SDK sends them to the endpoint URL it is given, signed for `pricing` in us-east-1."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            request = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise PricingError("SerializationException", "The request body is not JSON") from None
        if not isinstance(request, dict):
            raise PricingError("SerializationException", "The request body is not a JSON object")
        if call.action == "GetProducts":
            status, answer = 200, get_products(request)
        elif call.action == "DescribeServices":
            status, answer = 200, describe_services(request)
        else:
            raise PricingError(
                "UnknownOperationException",
                f"flotilla-emulator answers GetProducts and DescribeServices, not {call.action}",
            )
        headers = [("Content-Type", "application/x-amz-json-1.1")]
    except PricingError as error:
        status = error.status
        answer = {"__type": error.code, "message": error.message}
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", error.code)]
    data = json.dumps(answer).encode()
    headers += [("x-amzn-RequestId", str(uuid.uuid4())), ("Content-Length", str(len(data)))]
    start_response(f"{status} {'OK' if status == 200 else 'Error'}", headers)
    return [data]


def pricing_page(request: dict[str, Any], query: str) -> tuple[int, int]:
    """(first index, page size) from NextToken and MaxResults; a token only fits its query."""
    size = request.get("MaxResults", PRICING_PAGE_MAX)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= PRICING_PAGE_MAX:
        raise PricingError(
            "InvalidParameterException", f"MaxResults must be 1..{PRICING_PAGE_MAX}, not {size!r}"
        )
    token = request.get("NextToken")
    if not token:
        return 0, size
    try:
        text = base64.urlsafe_b64decode(str(token).encode()).decode()
        offset, _, digest = text.partition(":")
        if digest != query:
            raise ValueError(text)
        return int(offset), size
    except ValueError:
        raise PricingError("InvalidNextTokenException", "The NextToken is invalid") from None


def pricing_token(offset: int, query: str) -> str:
    return base64.urlsafe_b64encode(f"{offset}:{query}".encode()).decode()


def parse_price_filters(request: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, field lower-cased, value) of each filter."""
    filters = request.get("Filters") or []
    if not isinstance(filters, list):
        raise PricingError("InvalidParameterException", "Filters must be a list")
    parsed = []
    for f in filters:
        if not isinstance(f, dict) or not all(
            isinstance(f.get(k), str) for k in ("Field", "Value")
        ):
            raise PricingError("InvalidParameterException", "each filter needs Field and Value")
        kind = f.get("Type", "TERM_MATCH")
        if kind not in FILTER_TYPES:
            raise PricingError(
                "InvalidParameterException",
                f"filter type {kind!r} is not one of {', '.join(FILTER_TYPES)}",
            )
        parsed.append((kind, f["Field"].lower(), f["Value"]))
    return parsed


def filter_matches(kind: str, have: str | None, want: str) -> bool:
    """Field names and values compare without regard to case."""
    if have is None:
        return kind == "NONE_OF"
    have = have.lower()
    if kind in ("TERM_MATCH", "EQUALS"):
        return have == want.lower()
    if kind == "CONTAINS":
        return want.lower() in have
    listed = {v.strip().lower() for v in want.split(",")}
    return (have in listed) if kind == "ANY_OF" else (have not in listed)


def ec2_product_attributes(region: str, instance_type: str) -> dict[str, str]:
    info = INSTANCE_TYPES.get(instance_type, {})
    vcpus = (info.get("VCpuInfo") or {}).get("DefaultVCpus")
    mib = (info.get("MemoryInfo") or {}).get("SizeInMiB")
    family = instance_type.split(".", 1)[0]
    location, prefix = REGION_NAMES.get(region, (region, f"{region}-"))
    attributes = {
        "servicecode": "AmazonEC2",
        "servicename": "Amazon Elastic Compute Cloud",
        "productFamily": "Compute Instance (bare metal)"
        if instance_type.endswith(".metal") or ".metal-" in instance_type
        else "Compute Instance",
        "location": location,
        "locationType": "AWS Region",
        "regionCode": region,
        "instanceType": instance_type,
        "instanceFamily": family,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "licenseModel": "No License required",
        "capacitystatus": "Used",
        "marketoption": "OnDemand",
        "operation": "RunInstances",
        "usagetype": f"{prefix}BoxUsage:{instance_type}",
    }
    if vcpus is not None:
        attributes["vcpu"] = str(vcpus)
    if mib is not None:
        attributes["memory"] = f"{mib / 1024:g} GiB"
    return attributes


def product_document(attributes: dict[str, str], price: float) -> str:
    """One `PriceList` entry, a JSON string shaped like AWS's price document."""
    region, instance_type = attributes["regionCode"], attributes["instanceType"]
    sku = base64.b32encode(hashlib.sha256(f"{region}/{instance_type}".encode()).digest())
    sku_text = sku.decode()[:16]
    term = f"{sku_text}.{ON_DEMAND_TERM}"
    rate = f"{term}.{HOURLY_DIMENSION}"
    published = f"{TABLES.date}T00:00:00Z"
    product = {k: v for k, v in attributes.items() if k != "productFamily"}
    return json.dumps(
        {
            "product": {
                "productFamily": attributes["productFamily"],
                "attributes": product,
                "sku": sku_text,
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    term: {
                        "priceDimensions": {
                            rate: {
                                "unit": "Hrs",
                                "endRange": "Inf",
                                "description": f"${price:g} per On Demand Linux {instance_type}"
                                " Instance Hour",
                                "appliesTo": [],
                                "rateCode": rate,
                                "beginRange": "0",
                                "pricePerUnit": {"USD": f"{price:.10f}"},
                            }
                        },
                        "sku": sku_text,
                        "effectiveDate": published,
                        "offerTermCode": ON_DEMAND_TERM,
                        "termAttributes": {},
                    }
                }
            },
            "version": TABLES.date.replace("-", "") + "000000",
            "publicationDate": published,
        }
    )


def get_products(request: dict[str, Any]) -> dict[str, Any]:
    """EC2 on-demand Linux prices (shared tenancy, capacity status Used, no pre-installed
    software) of every region moto knows: flotilla-capacity's us-east-1 table scaled by each
    region's factor (on_demand_price). Filters on any attribute of the document (and
    `productFamily`, `servicecode`); a filter the data cannot satisfy gives an empty list."""
    if not isinstance(request.get("ServiceCode"), str) or not request["ServiceCode"]:
        raise PricingError("InvalidParameterException", "ServiceCode is required")
    filters = parse_price_filters(request)
    query = hashlib.sha256(
        json.dumps([request["ServiceCode"], filters], sort_keys=True).encode()
    ).hexdigest()[:16]
    start, size = pricing_page(request, query)
    if request["ServiceCode"] != "AmazonEC2":
        return {"FormatVersion": "aws_v1", "PriceList": []}
    exact = {field: value for kind, field, value in filters if kind in ("TERM_MATCH", "EQUALS")}
    with TABLES.lock:
        regions = sorted(TABLES.region_factors)
        types = sorted(TABLES.us_east_1)
    if "regioncode" in exact:
        regions = [r for r in regions if r.lower() == exact["regioncode"].lower()]
    if "instancetype" in exact:
        types = [t for t in types if t.lower() == exact["instancetype"].lower()]
    matched: list[tuple[dict[str, str], float]] = []
    for region in regions:
        for instance_type in types:
            attributes = ec2_product_attributes(region, instance_type)
            lowered = {k.lower(): v for k, v in attributes.items()}
            if not all(filter_matches(k, lowered.get(f), v) for k, f, v in filters):
                continue
            price = on_demand_price(region, instance_type)
            if price is not None:
                matched.append((attributes, price))
    page = matched[start : start + size]
    answer: dict[str, Any] = {
        "FormatVersion": "aws_v1",
        "PriceList": [product_document(a, p) for a, p in page],
    }
    if start + size < len(matched):
        answer["NextToken"] = pricing_token(start + size, query)
    return answer


def describe_services(request: dict[str, Any]) -> dict[str, Any]:
    code = request.get("ServiceCode")
    services = [{"ServiceCode": "AmazonEC2", "AttributeNames": EC2_ATTRIBUTES}]
    return {
        "Services": [s for s in services if not code or s["ServiceCode"] == code],
        "FormatVersion": "aws_v1",
    }


# --- CreateFleet of type instant: errors for dry pools, allocation over the open ones ------------


@dataclass
class Override:
    """One launch template override of a CreateFleet request, resolved."""

    index: int
    template: Any  # moto's LaunchTemplateVersion
    spec: dict[str, Any]  # the LaunchTemplateSpecification the answer names
    given: dict[str, Any]  # the override as asked, for the answer
    instance_type: str
    subnet_id: str | None
    zone: str
    image_id: str | None
    priority: float
    weight: float

    def pool(self, market: str) -> Pool:
        return Pool(self.instance_type, self.zone, market)

    def answer(self) -> dict[str, Any]:
        """`LaunchTemplateAndOverrides` as AWS names it."""
        return {"LaunchTemplateSpecification": self.spec, "Overrides": self.given}


# Spot strategies that spread capacity over pools, and price-capacity-optimized's reach: the open
# pools priced within this factor of the cheapest open one.
SPREAD_STRATEGIES = ("price-capacity-optimized", "capacity-optimized", "diversified")
PRICE_CAPACITY_REACH = 1.2


def resolve_overrides(backend: Any, configs: list[dict[str, Any]]) -> list[Override]:
    overrides: list[Override] = []
    for config in configs or []:
        asked = dict(config.get("LaunchTemplateSpecification") or {})
        template = backend._get_template_from_args(asked)  # unknown: moto's NotFound errors
        spec = {"LaunchTemplateId": template.template.id, "Version": str(template.number)}
        if asked.get("LaunchTemplateName"):
            spec["LaunchTemplateName"] = asked["LaunchTemplateName"]
        data = template.data
        nics = data.get("NetworkInterfaces") or []
        for given in config.get("Overrides") or [{}]:
            instance_type = given.get("InstanceType") or data.get("InstanceType")
            if not instance_type:
                raise EC2ClientError(
                    "InvalidParameterValue",
                    "Each override or its launch template must give an InstanceType",
                )
            subnet_id = given.get("SubnetId") or next(
                (n.get("SubnetId") for n in nics if int(n.get("DeviceIndex", 0)) == 0), None
            )
            zone = (
                backend.get_subnet(subnet_id).availability_zone  # unknown: NotFound
                if subnet_id
                else given.get("AvailabilityZone")
                or (data.get("Placement") or {}).get("AvailabilityZone")
                or f"{backend.region_name}a"
            )
            priority = given.get("Priority")
            overrides.append(
                Override(
                    index=len(overrides),
                    template=template,
                    spec=spec,
                    given=dict(given),
                    instance_type=instance_type,
                    subnet_id=subnet_id,
                    zone=zone,
                    image_id=given.get("ImageId") or data.get("ImageId"),
                    priority=float(priority) if priority is not None else math.inf,
                    weight=float(given.get("WeightedCapacity") or 1.0),
                )
            )
    return overrides


def allocate(
    open_pools: list[Override], capacity: float, market: str, options: dict[str, Any], region: str
) -> list[tuple[Override, int]]:
    """How many instances each open override gets, in launch order, for `capacity` units.

    Spot: `price-capacity-optimized` spreads evenly over the open pools priced within
    PRICE_CAPACITY_REACH of the cheapest (cheapest first); `lowest-price` (AWS's default) fills
    the cheapest, or spreads over the `InstancePoolsToUseCount` cheapest; `diversified` and
    `capacity-optimized` (there is no capacity model) spread over every open pool in list
    order; `capacity-optimized-prioritized` fills the lowest `Priority`. On-demand:
    `lowest-price` (the default) fills the cheapest by on-demand price, `prioritized` the
    lowest `Priority`. Ties keep list order; an unpriced type sorts last."""
    if not open_pools or capacity <= 0:
        return []
    strategy = options.get("AllocationStrategy") or "lowest-price"

    def price(o: Override) -> float:
        found = (
            spot_price(region, o.zone, o.instance_type)
            if market == "spot"
            else on_demand_price(region, o.instance_type)
        )
        return math.inf if found is None else found / o.weight

    by_price = sorted(open_pools, key=lambda o: (price(o), o.index))
    by_priority = sorted(open_pools, key=lambda o: (o.priority, o.index))
    if market == "spot" and strategy == "price-capacity-optimized":
        cheapest = price(by_price[0])
        chosen = [o for o in by_price if price(o) <= cheapest * PRICE_CAPACITY_REACH] or by_price
    elif market == "spot" and strategy in SPREAD_STRATEGIES:
        chosen = open_pools
    elif market == "spot" and strategy == "lowest-price":
        chosen = by_price[: max(1, int(options.get("InstancePoolsToUseCount") or 1))]
    elif strategy in ("prioritized", "capacity-optimized-prioritized"):
        chosen = by_priority[:1]
    else:
        chosen = by_price[:1]
    counts = [0] * len(chosen)
    left, turn = capacity, 0
    while left > 0:
        counts[turn % len(chosen)] += 1
        left -= chosen[turn % len(chosen)].weight
        turn += 1
    return [(o, n) for o, n in zip(chosen, counts, strict=True) if n]


def fleet_tags(tag_specifications: list[dict[str, Any]], resource: str) -> dict[str, str]:
    return convert_tag_spec(tag_specifications or []).get(resource, {})


def launch_override(
    backend: Any,
    fleet: Any,
    override: Override,
    count: int,
    market: str,
    tag_specifications: list[dict[str, Any]],
) -> list[Any]:
    """Runs `count` instances of `override` through RunInstances' path (the patched
    run_instances): the template's user data, instance profile, security groups (on the
    instance, as AWS shows them, and on its interface), network interfaces with the override's
    subnet, block devices, metadata options and tags, as RunInstances with that template
    would."""
    data = override.template.data
    nics = copy.deepcopy(data.get("NetworkInterfaces") or [])
    group_ids = list(data.get("SecurityGroupIds") or [])
    for nic in nics:
        if int(nic.get("DeviceIndex", 0)) == 0 and override.subnet_id:
            nic["SubnetId"] = override.subnet_id
        group_ids.extend(nic.pop("Groups", None) or [])
    template_tags = convert_tag_spec(data.get("TagSpecifications") or [])
    tags = {
        "instance": {
            **fleet_tags(tag_specifications, "instance"),
            "aws:ec2:fleet-id": fleet.id,
        },
        "volume": {
            **template_tags.get("volume", {}),
            **fleet_tags(tag_specifications, "volume"),
        },
    }
    profile = data.get("IamInstanceProfile") or {}
    kwargs: dict[str, Any] = {
        "instance_type": override.instance_type,
        "is_instance_type_default": False,
        "placement": None if override.subnet_id else override.zone,
        "region_name": backend.region_name,
        "subnet_id": None if nics else override.subnet_id,
        "key_name": data.get("KeyName"),
        "security_group_ids": list(dict.fromkeys(group_ids)),
        "nics": nics,
        "tags": tags,
        "ebs_optimized": bool(data.get("EbsOptimized")),
        "instance_market_options": "spot" if market == "spot" else {},
        "instance_initiated_shutdown_behavior": data.get("InstanceInitiatedShutdownBehavior"),
        "launch_template": {
            "LaunchTemplateId": override.template.template.id,
            "Version": str(override.template.number),
        },
        "iam_instance_profile_name": profile.get("Name"),
        "iam_instance_profile_arn": profile.get("Arn"),
        "monitoring_state": "enabled"
        if (data.get("Monitoring") or {}).get("Enabled")
        else "disabled",
        "metadata_options": data.get("MetadataOptions") or {},
        "fleet_id": fleet.id,
    }
    mappings = [m for m in data.get("BlockDeviceMappings") or [] if m.get("Ebs")]
    if mappings:
        # Given, so moto does not add its default 8 GiB root volume beside the template's.
        kwargs["block_device_mappings"] = mappings
    reservation = backend.run_instances(override.image_id, count, None, [], **kwargs)
    if profile.get("Name") or profile.get("Arn"):
        # The patched run_instances gives the profile to all but the first, as RunInstances'
        # response gives it to the first.
        backend.associate_iam_instance_profile(
            reservation.instances[0].id,
            iam_instance_profile_name=profile.get("Name"),
            iam_instance_profile_arn=profile.get("Arn"),
        )
    fleet.on_demand_instances.extend(
        {"id": None, "instance": instance, "launch_spec": None}
        for instance in reservation.instances
    )
    return reservation.instances


def check_instance_profiles(backend: Any, overrides: list[Override]) -> None:
    """An unknown instance profile fails the whole request before anything launches."""
    for template in {id(o.template): o.template for o in overrides}.values():
        profile = template.data.get("IamInstanceProfile") or {}
        if not (profile.get("Name") or profile.get("Arn")):
            continue
        try:
            found = filter_iam_instance_profiles(
                backend.account_id,
                partition=backend.partition,
                iam_instance_profile_arn=profile.get("Arn"),
                iam_instance_profile_name=profile.get("Name"),
            )
        except Exception:
            found = None
        if found is None:
            name = profile.get("Arn") or profile.get("Name")
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Value ({name}) for parameter iamInstanceProfile is invalid."
                " Invalid IAM Instance Profile name",
            )


original_create_fleet = FleetsBackend.create_fleet


def create_fleet(self: Any, **kwargs: Any) -> Any:
    """moto's for `maintain` and `request`; for `instant`, flotilla's: each override's pool (type,
    the subnet's zone, market) may be dry by a pool fault rule (evaluated once per override and
    market asked for, action `*` or `CreateFleet`): dry ones become `Errors`, and the target
    capacity is allocated over the open ones (allocate()) and launched like RunInstances."""
    if kwargs.get("fleet_type") != "instant":
        return original_create_fleet(self, **kwargs)
    target = kwargs.get("target_capacity_specification") or {}
    total = float(target.get("TotalTargetCapacity") or 0)
    on_demand_part = float(target.get("OnDemandTargetCapacity") or 0)
    spot_part = float(target.get("SpotTargetCapacity") or 0)
    default = target.get("DefaultTargetCapacityType") or "on-demand"
    rest = max(0.0, total - on_demand_part - spot_part)
    parts = {"on-demand": on_demand_part, "spot": spot_part}
    parts[default if default in parts else "on-demand"] += rest
    overrides = resolve_overrides(self, kwargs.get("launch_template_configs") or [])
    check_instance_profiles(self, overrides)
    empty = {**kwargs, "target_capacity_specification": {"TotalTargetCapacity": 0}}
    fleet = original_create_fleet(self, **{**empty, "launch_template_configs": []})
    fleet.target_capacity_specification = target
    fleet.launch_template_configs = kwargs.get("launch_template_configs") or []
    fleet.target_capacity = int(total)
    instances: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    scope = getattr(CURRENT, "scope", "-")
    for market in ("on-demand", "spot"):
        if parts[market] <= 0:
            continue
        open_pools = []
        for override in overrides:
            refusal = unsupported(self.region_name, override)
            if refusal is None:
                hit = FAULTS.pick_pool(scope, "CreateFleet", override.pool(market))
                if hit is None:
                    open_pools.append(override)
                    continue
                refusal = pool_error(hit, override.pool(market))
            code, message = refusal
            errors.append(
                {
                    "LaunchTemplateAndOverrides": override.answer(),
                    "Lifecycle": market,
                    "ErrorCode": code,
                    "ErrorMessage": message,
                }
            )
        options = (
            kwargs.get("spot_options") if market == "spot" else kwargs.get("on_demand_options")
        )
        for override, wanted in allocate(
            open_pools, parts[market], market, options or {}, self.region_name
        ):
            subnet = self.get_subnet(override.subnet_id) if override.subnet_id else None
            count = min(wanted, free_addresses(subnet)) if subnet is not None else wanted
            if count < wanted:
                error = InsufficientFreeAddresses(override.subnet_id or "")
                errors.append(
                    {
                        "LaunchTemplateAndOverrides": override.answer(),
                        "Lifecycle": market,
                        "ErrorCode": error.code,
                        "ErrorMessage": error.message,
                    }
                )
            if count == 0:
                continue
            launched = launch_override(
                self, fleet, override, count, market, kwargs.get("tag_specifications") or []
            )
            entry: dict[str, Any] = {
                "LaunchTemplateAndOverrides": override.answer(),
                "Lifecycle": market,
                "InstanceIds": [i.id for i in launched],
                "InstanceType": override.instance_type,
            }
            instances.append(entry)
            units = count * override.weight
            fleet.fulfilled_capacity += units
            if market == "spot":
                fleet.fulfilled_spot_capacity += units
            else:
                fleet.fulfilled_on_demand_capacity += units
    fleet._flotilla_instances = instances
    fleet._flotilla_errors = errors
    return fleet


def unsupported(region: str, override: Override) -> tuple[str, str] | None:
    """AWS's error for a type its zone does not offer (moto's offerings data, which
    DescribeInstanceTypeOfferings answers); None when offered, or when moto has no data."""
    offerings = INSTANCE_TYPE_OFFERINGS["availability-zone"].get(region)
    if not offerings:
        return None
    zones = sorted(o["Location"] for o in offerings if o["InstanceType"] == override.instance_type)
    if override.zone in zones:
        return None
    return (
        "Unsupported",
        f"Your requested instance type ({override.instance_type}) is not supported in your"
        f" requested Availability Zone ({override.zone}). Please retry your request by not"
        f" specifying an Availability Zone or choosing {', '.join(zones) or 'another region'}.",
    )


def pool_error(rule: Rule, pool: Pool) -> tuple[str, str]:
    """The code and message a dry pool answers, as fault_response words them."""
    _, message = KNOWN_ERRORS.get(rule.code, (400, f"{rule.code} (injected by flotilla-emulator)"))
    text = rule.message or message.format(type=pool.instance_type, az=pool.availability_zone)
    return rule.code, text


original_fleet_instances = Fleet.instances


def fleet_instances(self: Any) -> Any:
    """An instant fleet's `Instances`: one entry per override launched, as AWS groups them."""
    if hasattr(self, "_flotilla_instances"):
        return self._flotilla_instances
    return original_fleet_instances.fget(self)


original_create_fleet_response = Fleets.create_fleet


def create_fleet_response(self: Any) -> Any:
    """moto's answer, with the instant fleet's `Errors` (moto always leaves them out)."""
    result = original_create_fleet_response(self)
    fleet = self.ec2_backend.get_fleet(result.result["FleetId"])
    errors = getattr(fleet, "_flotilla_errors", None)
    if errors is not None:
        result.result["Errors"] = errors
    return result


# --- EC2 throttling: token buckets per scope and region, off unless switched on -----------------


class TokenBucket:
    """flotilla-capacity's `TokenBucket`: holds up to `capacity` tokens, refills
    `refill_per_second`; a take of more than the capacity needs a full bucket and takes it all;
    a refused take takes nothing."""

    def __init__(self, capacity: float, refill_per_second: float, now: float) -> None:
        self.capacity, self.refill_per_second = capacity, refill_per_second
        self.tokens, self.last = capacity, now

    def take(self, tokens: float, now: float) -> float:
        """The tokens taken (`min(tokens, capacity)`), or 0 when they are not there yet."""
        elapsed = max(0.0, now - self.last)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.refill_per_second)
        self.last = max(self.last, now)
        wanted = min(tokens, self.capacity)
        if self.tokens >= wanted:
            self.tokens -= wanted
            return wanted
        return 0.0

    def give_back(self, tokens: float) -> None:
        self.tokens = min(self.capacity, self.tokens + tokens)


class RegionBuckets:
    """flotilla-capacity's `RegionBuckets` of one scope (account) and region: a request bucket
    per action class, and the instance buckets (RunInstances, TerminateInstances), numbers and
    classes from TABLES. The instance bucket is asked first; when the request bucket then
    refuses, the instances go back (all that were taken; flotilla-capacity gives back the
    number asked for, which can overfill a bucket asked for more than it holds)."""

    def __init__(self) -> None:
        self.requests: dict[str, TokenBucket] = {}
        self.instances: dict[str, TokenBucket] = {}

    def take(self, action: str, filtered: bool, instances: int, now: float) -> bool:
        classes = TABLES.actions.get(action, ("Mutating", "Mutating"))
        name = classes[1] if filtered else classes[0]
        taken = 0.0
        if instances > 0 and action in TABLES.instances:
            bucket = self.instances.setdefault(action, TokenBucket(*TABLES.instances[action], now))
            taken = bucket.take(instances, now)
            if not taken:
                return False
        requests = self.requests.setdefault(name, TokenBucket(*TABLES.classes[name], now))
        if requests.take(1, now):
            return True
        if taken:
            self.instances[action].give_back(taken)
        return False


def filtered(params: dict[str, str]) -> bool:
    """Filters, ids or pagination: what moves a Describe call to the larger bucket."""
    return any(
        key.startswith("Filter.") or key in ("MaxResults", "NextToken") or LIST_KEY.match(key)
        for key in params
    )


LIST_KEY = re.compile(r"^\w+(Id|Name)\.\d+$")


def instance_count(call: Call) -> int:
    """What a call counts in instances: RunInstances' MaxCount, TerminateInstances' ids."""
    if call.action == "RunInstances":
        try:
            return max(1, int(call.params.get("MaxCount") or call.params.get("MinCount") or 1))
        except ValueError:
            return 1
    if call.action == "TerminateInstances":
        return sum(1 for key in call.params if re.match(r"^InstanceId\.\d+$", key))
    return 0


class Throttling:
    """Per scope (`*`: scopes without their own setting), whether EC2's buckets apply; the
    buckets per scope and region; and the requests refused, per scope, region and Action."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enabled: dict[str, bool] = {}
        self.buckets: dict[tuple[str, str], RegionBuckets] = {}
        self.throttled: dict[str, dict[str, dict[str, int]]] = {}

    def on(self, scope: str) -> bool:
        return self.enabled.get(scope, self.enabled.get(ANY, False))

    def admit(self, call: Call) -> bool:
        """Takes the call's tokens, or counts it as throttled (taking nothing)."""
        if call.service != "ec2":
            return True
        with self.lock:
            if not self.on(call.scope) or not TABLES.loaded:
                return True
            buckets = self.buckets.setdefault((call.scope, call.region), RegionBuckets())
            if buckets.take(
                call.action, filtered(call.params), instance_count(call), time.monotonic()
            ):
                return True
            actions = self.throttled.setdefault(call.scope, {}).setdefault(call.region, {})
            actions[call.action] = actions.get(call.action, 0) + 1
            return False

    def set(self, scope: str, enabled: bool | None) -> None:
        """Switches a scope's model (None: back to `*`'s); its buckets start full again."""
        with self.lock:
            if enabled is None:
                self.enabled.pop(scope, None)
                self.throttled.pop(scope, None)
            else:
                self.enabled[scope] = enabled
            for key in [k for k in self.buckets if scope in (k[0], ANY)]:
                del self.buckets[key]

    def to_json(self, scope: str) -> dict[str, Any]:
        with self.lock:
            by_region = json.loads(json.dumps(self.throttled.get(scope, {})))
        total: dict[str, int] = {}
        for actions in by_region.values():
            for action, n in actions.items():
                total[action] = total.get(action, 0) + n
        return {"enabled": self.on(scope), "throttled": total, "by_region": by_region}


THROTTLING = Throttling()


# --- Instances, as the booter sees them ---------------------------------------------------------


def list_instances() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for account_id, regions in list(ec2_backends.items()):
        for region, backend in list(regions.items()):
            for reservation in list(backend.reservations.values()):
                out.extend(
                    describe(account_id, region, backend, instance)
                    for instance in reservation.instances
                )
    return out


def describe(account_id: str, region: str, backend: Any, instance: Any) -> dict[str, Any]:
    association = backend.iam_instance_profile_associations.get(instance.id)
    profile = association.iam_instance_profile if association else None
    roles = getattr(profile, "roles", []) if profile else []
    user_data = instance.user_data.as_bytes().decode("ascii") if instance.user_data else None
    nic = instance.nics.get(0)
    return {
        "id": instance.id,
        "account_id": account_id,
        "region": region,
        "state": instance._state.name,
        "public_ip": instance.public_ip,
        "private_ip": instance.private_ip,
        "private_dns_name": instance.private_dns_name,
        "mac": nic.mac_address if nic else None,
        "instance_type": instance.instance_type,
        "availability_zone": instance.availability_zone,
        "image_id": instance.image_id,
        "image_boot": image_boot(backend, instance.image_id),
        "architecture": instance.architecture,
        "ami_launch_index": instance.ami_launch_index,
        "user_data": user_data,
        "tags": dict(backend.tags.get(instance.id, {})),
        "iam_instance_profile": profile.arn if profile else None,
        "iam_role": roles[0].name if roles else None,
        "scope": getattr(instance, "_flotilla_scope", "-"),
        "lifecycle": "spot" if instance.lifecycle == "spot" else "on-demand",
        "launch_time": instance.launch_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "subnet_id": instance.subnet_id,
        "vpc_id": instance.vpc_id,
        "state_reason": (
            {"code": instance.state_reason.code, "message": instance.state_reason.message}
            if instance.state_reason.code
            else None
        ),
        "spot_interruption": getattr(instance, "_flotilla_spot_notice", None),
        "spot_reclaim_after_ms": getattr(instance, "_flotilla_reclaim_after_ms", None),
        "volumes": attachments(backend, instance),
    }


# The tag of a registered image that says what it starts at boot: `none` models an image without
# cloud-init (or systemd), whose instances run and never run their user data.
IMAGE_BOOT_TAG = "flotilla-emulator:boot"


def image_boot(backend: Any, image_id: str | None) -> str:
    """`none` for an image tagged `flotilla-emulator:boot=none`, else `cloud-init`."""
    tags = backend.tags.get(image_id, {}) if image_id else {}
    return "none" if tags.get(IMAGE_BOOT_TAG) == "none" else "cloud-init"


def find_instance(instance_id: str) -> tuple[str, str, Any, Any] | None:
    """(account, region, backend, instance) of an instance id, in any account and region."""
    for account_id, regions in list(ec2_backends.items()):
        for region, backend in list(regions.items()):
            for reservation in list(backend.reservations.values()):
                for instance in reservation.instances:
                    if instance.id == instance_id:
                        return account_id, region, backend, instance
    return None


def terminate_with_reason(instance_id: str, body: Any) -> tuple[int, Any]:
    """The service ends an instance, as AWS does when a launch fails or a spot instance is
    reclaimed: through `shutting-down` (the scope's timing) to `terminated`, with the given
    StateReason; its StateTransitionReason is the reason's message, as AWS shows it then.
    An instance already on its way down keeps its state and reason."""
    reason = expect_object(body, {"code", "message"}, "the body")
    for field in ("code", "message"):
        if not isinstance(reason.get(field), str) or not reason[field]:
            raise BadRequest(
                f"`{field}` must be a non-empty string, e.g. "
                '{"code": "Server.InternalError", "message": "Server.InternalError: ..."}'
            )
    with LIFECYCLE.lock:
        found = find_instance(instance_id)
        if found is None:
            return 404, {"error": f"no instance {instance_id}"}
        account_id, region, backend, instance = found
        if instance._state.name in ("pending", "running"):
            instance.terminate()  # wind_down's: shutting-down first when the scope says so
            instance._reason = reason["message"]
            instance.state_reason = StateReason(reason["message"], reason["code"])
            LIFECYCLE.changed()
        return 200, describe(account_id, region, backend, instance)


# --- AWS Health (AWSHealth_20160804), which moto lacks ------------------------------------------

HEALTH_PAGE_MAX = 100
HEALTH_STATUSES = ("open", "closed", "upcoming")
HEALTH_CATEGORIES = ("issue", "accountNotification", "scheduledChange", "investigation")


class HealthError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class HealthEvents:
    """Events per scope that a test opens and closes (`/_flotilla/scopes/{scope}/health-events`);
    `DescribeEvents` in a scope answers that scope's events and those of `*`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_scope: dict[str, list[dict[str, Any]]] = {}

    def open(self, scope: str, body: Any) -> dict[str, Any]:
        fields = {"region", "service", "event_type_code", "category"}
        spec = expect_object(body, fields, "a health event")
        region = spec.get("region")
        if not isinstance(region, str) or not region:
            raise BadRequest("a health event needs `region`, e.g. us-west-2")
        service = spec.get("service", "EC2")
        category = spec.get("category", "issue")
        if category not in HEALTH_CATEGORIES:
            raise BadRequest(f"`category` is one of {', '.join(HEALTH_CATEGORIES)}")
        code = spec.get("event_type_code", f"AWS_{service}_OPERATIONAL_ISSUE")
        now = time.time()
        event = {
            "arn": f"arn:aws:health:{region}::event/{service}/{code}/{code}_{uuid.uuid4().hex[:20]}",
            "service": service,
            "eventTypeCode": code,
            "eventTypeCategory": category,
            "region": region,
            "startTime": now,
            "lastUpdatedTime": now,
            "statusCode": "open",
            "eventScopeCode": "PUBLIC",
        }
        with self.lock:
            self.by_scope.setdefault(scope, []).append(event)
        return dict(event)

    def close(self, scope: str, body: Any) -> tuple[int, dict[str, Any]]:
        arn = expect_object(body, {"arn"}, "closing a health event").get("arn")
        with self.lock:
            for event in self.by_scope.get(scope, []):
                if event["arn"] == arn:
                    now = time.time()
                    event.update(statusCode="closed", endTime=now, lastUpdatedTime=now)
                    return 200, dict(event)
        return 404, {"error": f"no health event {arn} in scope {scope}"}

    def list(self, scope: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(e) for e in self.by_scope.get(scope, [])]

    def visible(self, scope: str) -> list[dict[str, Any]]:
        with self.lock:
            mine = self.by_scope.get(scope, []) if scope != ANY else []
            return [dict(e) for e in [*self.by_scope.get(ANY, []), *mine]]


HEALTH_EVENTS = HealthEvents()


def health_filter_matches(event: dict[str, Any], event_filter: dict[str, Any]) -> bool:
    """The filter keys flotilla sends (each a list: any value matches), checked as AWS does;
    other keys are refused rather than ignored, so a test never passes on a filter unread."""
    keys = {
        "services": "service",
        "regions": "region",
        "eventStatusCodes": "statusCode",
        "eventTypeCategories": "eventTypeCategory",
        "eventTypeCodes": "eventTypeCode",
        "eventArns": "arn",
    }
    for key, values in event_filter.items():
        if key not in keys:
            raise HealthError(
                "UnsupportedFilterException", f"flotilla-emulator does not read the filter `{key}`"
            )
        if not isinstance(values, list):
            raise HealthError("ValidationException", f"filter `{key}` must be a list")
        if key == "regions" and not 1 <= len(values) <= 10:
            raise HealthError("ValidationException", "filter `regions` names 1 to 10 regions")
        if key == "eventStatusCodes" and any(v not in HEALTH_STATUSES for v in values):
            raise HealthError("ValidationException", f"eventStatusCodes: {values}")
        if values and event[keys[key]] not in values:
            return False
    return True


def describe_health_events(scope: str, request: dict[str, Any]) -> dict[str, Any]:
    event_filter = request.get("filter") or {}
    if not isinstance(event_filter, dict):
        raise HealthError("ValidationException", "filter must be an object")
    size = request.get("maxResults", HEALTH_PAGE_MAX)
    if not isinstance(size, int) or not 10 <= size <= HEALTH_PAGE_MAX:
        raise HealthError("ValidationException", "maxResults is 10 to 100")
    token = request.get("nextToken")
    try:
        start = decode_token(token) if token else 0
    except EC2ClientError:
        raise HealthError("InvalidPaginationToken", f"The token '{token}' is invalid.") from None
    events = [e for e in HEALTH_EVENTS.visible(scope) if health_filter_matches(e, event_filter)]
    events.sort(key=lambda e: e["lastUpdatedTime"], reverse=True)
    answer: dict[str, Any] = {"events": events[start : start + size]}
    if start + size < len(events):
        answer["nextToken"] = encode_token(start + size)
    return answer


class CborError(ValueError):
    pass


def cbor_decode(data: bytes) -> Any:
    """One CBOR data item (RFC 8949) of the kinds Smithy's RPC v2 CBOR protocol sends: integers,
    byte and text strings, arrays and maps (definite or indefinite length), tags (timestamps are
    tag 1), booleans, null and floats."""
    value, end = cbor_item(data, 0)
    if end != len(data):
        raise CborError(f"{len(data) - end} bytes after the CBOR item")
    return value


BREAK = object()


def cbor_item(data: bytes, at: int) -> tuple[Any, int]:
    if at >= len(data):
        raise CborError("the CBOR item ends early")
    head = data[at]
    major, info = head >> 5, head & 0x1F
    at += 1
    if head == 0xFF:
        return BREAK, at
    if major == 7:
        if info == 20:
            return False, at
        if info == 21:
            return True, at
        if info in (22, 23):
            return None, at
        sizes = {25: ("!e", 2), 26: ("!f", 4), 27: ("!d", 8)}
        if info in sizes:
            fmt, size = sizes[info]
            return struct.unpack(fmt, data[at : at + size])[0], at + size
        raise CborError(f"CBOR simple value {info} is not read here")
    if info < 24:
        argument = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        argument = int.from_bytes(data[at : at + size], "big")
        at += size
    elif info == 31 and major in (2, 3, 4, 5):
        return cbor_indefinite(data, at, major)
    else:
        raise CborError(f"CBOR additional information {info} is not valid here")
    if major == 0:
        return argument, at
    if major == 1:
        return -1 - argument, at
    if major in (2, 3):
        raw = data[at : at + argument]
        return (raw if major == 2 else raw.decode("utf-8")), at + argument
    if major == 4:
        items = []
        for _ in range(argument):
            item, at = cbor_item(data, at)
            items.append(item)
        return items, at
    if major == 5:
        mapping = {}
        for _ in range(argument):
            key, at = cbor_item(data, at)
            mapping[key], at = cbor_item(data, at)
        return mapping, at
    value, at = cbor_item(data, at)  # a tag: the value stands for itself (epoch seconds)
    return value, at


def cbor_indefinite(data: bytes, at: int, major: int) -> tuple[Any, int]:
    if major in (2, 3):
        chunks = []
        while True:
            chunk, at = cbor_item(data, at)
            if chunk is BREAK:
                return (b"".join(chunks) if major == 2 else "".join(chunks)), at
            chunks.append(chunk)
    if major == 4:
        items = []
        while True:
            item, at = cbor_item(data, at)
            if item is BREAK:
                return items, at
            items.append(item)
    mapping = {}
    while True:
        key, at = cbor_item(data, at)
        if key is BREAK:
            return mapping, at
        mapping[key], at = cbor_item(data, at)


def cbor_head(major: int, argument: int) -> bytes:
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes([major << 5 | info]) + argument.to_bytes(size, "big")
    raise CborError("integer too large for CBOR")


def cbor_encode(value: Any, timestamps: frozenset[str] = frozenset()) -> bytes:
    """`value` in CBOR; map values under the keys in `timestamps` as epoch-seconds timestamps
    (tag 1), as Smithy's RPC v2 CBOR protocol sends them."""
    if value is None:
        return b"\xf6"
    if value is True or value is False:
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return cbor_head(0, value) if value >= 0 else cbor_head(1, -1 - value)
    if isinstance(value, float):
        return b"\xfb" + struct.pack("!d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return cbor_head(3, len(raw)) + raw
    if isinstance(value, bytes):
        return cbor_head(2, len(value)) + value
    if isinstance(value, list):
        return cbor_head(4, len(value)) + b"".join(cbor_encode(v, timestamps) for v in value)
    if isinstance(value, dict):
        out = cbor_head(5, len(value))
        for key, item in value.items():
            out += cbor_encode(key)
            if key in timestamps and isinstance(item, (int, float)):
                out += b"\xc1" + cbor_encode(float(item))
            else:
                out += cbor_encode(item, timestamps)
        return out
    raise CborError(f"cannot encode {type(value).__name__} in CBOR")


HEALTH_TIMESTAMPS = frozenset({"startTime", "endTime", "lastUpdatedTime"})
RPC_V2_CBOR_HEADERS = [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")]


def is_rpc_v2_cbor(environ: Environ) -> bool:
    return environ.get("HTTP_SMITHY_PROTOCOL", "") == "rpc-v2-cbor"


def rpc_v2_operation(path: str) -> str | None:
    """`DescribeEvents` of `/service/AWSHealth_20160804/operation/DescribeEvents`."""
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[0] == "service" and parts[2] == "operation":
        return parts[3]
    return None


def serve_health(call: Call, environ: Environ, start_response: StartResponse) -> list[bytes]:
    """AWS Health's `DescribeEvents` over the events tests open and close, in Smithy's RPC v2
    CBOR protocol (what the current SDKs speak to Health) or JSON 1.1 (older SDKs)."""
    cbor = is_rpc_v2_cbor(environ)
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            if cbor:
                request = cbor_decode(raw) if raw else {}
            else:
                request = json.loads(raw) if raw.strip() else {}
        except (ValueError, struct.error):
            raise HealthError("SerializationException", "The request body does not decode") from None
        if not isinstance(request, dict):
            raise HealthError("SerializationException", "The request body is not a map")
        if call.action != "DescribeEvents":
            raise HealthError(
                "UnknownOperationException",
                f"flotilla-emulator answers Health's DescribeEvents, not {call.action}",
            )
        status, answer = 200, describe_health_events(call.scope, request)
    except HealthError as error:
        status = 400
        answer = {"__type": f"com.amazonaws.health#{error.code}", "message": error.message}
    headers: list[tuple[str, str]]
    if cbor:
        data = cbor_encode(answer, HEALTH_TIMESTAMPS)
        headers = list(RPC_V2_CBOR_HEADERS)
    else:
        data = json.dumps(answer).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1")]
    headers += [("x-amzn-RequestId", str(uuid.uuid4())), ("Content-Length", str(len(data)))]
    start_response(f"{status} {'OK' if status == 200 else 'Error'}", headers)
    return [data]


# --- Control API: /_flotilla/... ----------------------------------------------------------------


def expect_object(value: Any, fields: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise BadRequest(
            f"{what}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    return value


def non_negative_ints(value: Any, fields: set[str], what: str) -> dict[str, int]:
    obj = expect_object(value, fields, what)
    for key, number in obj.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise BadRequest(f"{what}: `{key}` must be a non-negative integer (milliseconds)")
    return obj


def control(method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
    parts = path.strip("/").split("/")[1:]
    if parts == ["health"]:
        return 200, {"ok": True, "moto": "5.2.5"}
    if parts == ["instances"] and method == "GET":
        with LIFECYCLE.lock:
            LIFECYCLE.advance()
            generation = LIFECYCLE.generation
            if query.get("since") == str(generation):
                return 200, {"generation": generation, "unchanged": True}
            return 200, {"generation": generation, "instances": list_instances()}
    if parts == ["hosts"] and method == "GET":
        with LIFECYCLE.lock:
            LIFECYCLE.advance()
            advance_hosts()
            return 200, {"hosts": list_hosts(query.get("scope"))}
    if parts == ["public-ips"] and method == "GET":
        return 200, POOL.to_json()
    if parts == ["catalogue"] and method == "GET":
        return 200, catalogue()
    if parts == ["tables"]:
        if method == "PUT":
            return 200, TABLES.load(body)
        return 200, TABLES.summary()
    if parts == ["instances", "reclaim"]:
        if method != "POST":
            return 404, {"error": f"no control route {method} {path}; use POST"}
        return reclaim(body)
    if len(parts) == 3 and parts[0] == "instances" and parts[2] == "terminate":
        if method != "POST":
            return 404, {"error": f"no control route {method} {path}; use POST"}
        return terminate_with_reason(parts[1], body)
    if len(parts) == 4 and parts[0] == "scopes" and parts[2:] == ["health-events", "close"]:
        if method != "POST":
            return 404, {"error": f"no control route {method} {path}; use POST"}
        return HEALTH_EVENTS.close(parts[1], body)
    if len(parts) != 3 or parts[0] != "scopes":
        return 404, {"error": f"no control route {method} {path}"}
    scope, what = parts[1], parts[2]
    if what == "faults":
        if method == "PUT":
            rules = expect_object(body, {"rules"}, "the body").get("rules", [])
            if not isinstance(rules, list):
                raise BadRequest("`rules` must be a list")
            FAULTS.set(scope, [Rule.parse(rule) for rule in rules])
        elif method == "POST":
            FAULTS.add(scope, Rule.parse(body))
        elif method == "DELETE":
            FAULTS.set(scope, [])
        return 200, {"rules": FAULTS.get(scope)}
    if what == "counts":
        if method == "DELETE":
            COUNTS.reset(scope)
        return 200, {"counts": COUNTS.get(scope)}
    if what == "latency":
        if method == "PUT":
            LATENCY.set(scope, non_negative_ints(body, {"ms"}, "latency"))
        elif method == "DELETE":
            LATENCY.clear(scope, LATENCY_DEFAULT)
        return 200, LATENCY.get(scope)
    if what == "throttling":
        if method == "PUT":
            switch = expect_object(body, {"enabled"}, "throttling")
            if not isinstance(switch.get("enabled"), bool):
                raise BadRequest('throttling needs `{"enabled": true}` or false')
            if switch["enabled"] and not TABLES.loaded:
                raise BadRequest("the throttling table is not loaded yet (up hands it over)")
            THROTTLING.set(scope, switch["enabled"])
        elif method == "DELETE":
            THROTTLING.set(scope, None)
        return 200, THROTTLING.to_json(scope)
    if what == "spot-reclaim":
        if method == "PUT":
            RECLAIMS.set(scope, ReclaimSetting.parse(body))
        elif method == "DELETE":
            RECLAIMS.set(scope, None)
        setting = RECLAIMS.setting(scope)
        return 200, setting.to_json() if setting else {"probability_per_minute": 0.0}
    if what == "health-events":
        if method == "POST":
            return 200, HEALTH_EVENTS.open(scope, body)
        if method != "GET":
            return 404, {"error": f"no control route {method} {path}; use GET or POST"}
        return 200, {"events": HEALTH_EVENTS.list(scope)}
    if what == "clock":
        if method == "PUT":
            CLOCK.set(scope, non_negative_ints(body, set(CLOCK_DEFAULT), "clock"))
        elif method == "DELETE":
            CLOCK.clear(scope, CLOCK_DEFAULT)
        return 200, {**CLOCK.get(scope), "now": emulated_now(scope)}
    if what == "host-capacity":
        if method == "PUT":
            zones = body
            if not isinstance(zones, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in zones.values()
            ):
                raise BadRequest('host capacity is `{"zone": most hosts}`, e.g. {"us-east-1a": 1}')
            HOST_CAPACITY.set(scope, zones)
        elif method == "DELETE":
            HOST_CAPACITY.set(scope, None)
        return 200, {"zones": HOST_CAPACITY.get(scope)}
    if what == "timing":
        if method == "PUT":
            TIMING.set(scope, non_negative_ints(body, set(TIMING_DEFAULT), "timing"))
        elif method == "DELETE":
            TIMING.clear(scope, TIMING_DEFAULT)
        return 200, TIMING.get(scope)
    return 404, {"error": f"no control route {method} {path}"}


def serve_control(environ: Environ, start_response: StartResponse) -> list[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        status, answer = control(method, path, query, body)
    except (BadRequest, ValueError) as error:
        status, answer = 400, {"error": str(error)}
    data = json.dumps(answer).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "")
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


# --- An instance role's S3 object reads ---------------------------------------------------------

# The session token of the credentials an instance's IMDS serves (crates/emulator/src/imds.rs).
SESSION_PREFIX = "flotilla-emulator-session-"
# The S3 operations checked against the role, with the IAM action each needs.
ROLE_CHECKED_S3 = {"GetObject": "s3:GetObject", "HeadObject": "s3:GetObject"}


def role_refusal(call: Call, environ: Environ) -> str | None:
    """Why IAM would refuse this S3 object read made with an instance's role credentials, or
    None when it is allowed or not such a read. Path-style requests (flotilla's and the SDKs'
    against an IP endpoint)."""
    if call.service != "s3" or call.action not in ROLE_CHECKED_S3:
        return None
    query = parse_qs(environ.get("QUERY_STRING", ""))
    token = environ.get("HTTP_X_AMZ_SECURITY_TOKEN") or query.get("X-Amz-Security-Token", [""])[0]
    if not token.startswith(SESSION_PREFIX):
        return None
    instance_id = token[len(SESSION_PREFIX) :]
    action = ROLE_CHECKED_S3[call.action]
    bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
    resource = f"arn:aws:s3:::{bucket}/{unquote(key)}"
    found = find_instance(instance_id)
    if found is None:
        return f"the credentials of instance {instance_id}, which does not exist, are not valid"
    _, _, backend, instance = found
    association = backend.iam_instance_profile_associations.get(instance.id)
    profile = association.iam_instance_profile if association else None
    roles = list(getattr(profile, "roles", []) or [])
    results = []
    for role in roles:
        documents: list[str] = list(role.policies.values())
        for managed in role.managed_policies.values():
            documents += [v.document for v in managed.versions if v.is_default]
        # `${aws:userid}` of an instance's role session is `<role id>:<instance id>`.
        userid = f"{role.id}:{instance.id}"
        results += [
            IAMPolicy(d.replace("${aws:userid}", userid)).is_action_permitted(action, resource)
            for d in documents
        ]
    who = roles[0].arn if roles else f"instance {instance_id} (no instance profile)"
    if PermissionResult.DENIED in results:
        return f"{who} is not authorized to perform: {action} on resource: {resource} with an explicit deny"
    if PermissionResult.PERMITTED in results:
        return None
    return f"{who} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"


# --- The middleware around moto's app -----------------------------------------------------------

# EC2 requests run one at a time: the patches above read and change instances, addresses and
# pending transitions across calls. Other services (S3, SQS long polls) stay concurrent.
EC2_LOCK = LIFECYCLE.lock
READ_ONLY_PREFIXES = ("Describe", "Get", "List")


class Middleware:
    def __init__(self, moto_app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> None:
        self.moto_app = moto_app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_flotilla/"):
            return serve_control(environ, start_response)
        if path.startswith("/moto-api"):
            with EC2_LOCK:
                LIFECYCLE.changed()
                if path.rstrip("/") == "/moto-api/reset":
                    LIFECYCLE.due.clear()
                    POOL.reset()
                return self.moto_app(environ, start_response)
        call = identify(environ)
        COUNTS.add(call)
        delay = LATENCY.get(call.scope)["ms"]
        if delay:
            time.sleep(delay / 1000.0)
        if not THROTTLING.admit(call):
            status, headers, body = fault_response(call, Rule(code="RequestLimitExceeded"), None)
            start_response(f"{status} Throttled", [*headers, ("Content-Length", str(len(body)))])
            return [body]
        if call.service == "ec2":
            with EC2_LOCK:
                LIFECYCLE.advance()
                advance_hosts()
                return self.dispatch(call, environ, start_response)
        return self.dispatch(call, environ, start_response)

    def dispatch(
        self, call: Call, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        injected = FAULTS.pick(call)
        if injected is not None:
            status, headers, body = fault_response(call, *injected)
            start_response(f"{status} Injected", [*headers, ("Content-Length", str(len(body)))])
            return [body]
        refusal = role_refusal(call, environ)
        if refusal is not None:
            status, headers, body = fault_response(
                call, Rule(code="AccessDenied", message=refusal), None
            )
            start_response(f"{status} Denied", [*headers, ("Content-Length", str(len(body)))])
            return [body]
        if call.service == "pricing" or environ.get("HTTP_X_AMZ_TARGET", "").startswith(
            "AWSPriceListService."
        ):
            return serve_pricing(call, environ, start_response)
        if call.service == "health" or "AWSHealth_20160804" in (
            environ.get("HTTP_X_AMZ_TARGET", "") + environ.get("PATH_INFO", "")
        ):
            return serve_health(call, environ, start_response)
        CURRENT.scope = call.scope
        try:
            return self.moto_app(environ, start_response)
        finally:
            CURRENT.scope = "-"
            if call.service == "ec2" and not call.action.startswith(READ_ONLY_PREFIXES):
                LIFECYCLE.changed()


# --- Start ---------------------------------------------------------------------------------------


def warm_up() -> None:
    """Load the default region's EC2 backend (AMIs, instance types) before announcing the port,
    so the first test does not pay about two seconds for it."""
    ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].describe_images(owners=["099720109477"])


def exit_with_parent() -> None:
    """Exit when the process that started this one (flotilla-emulator) is gone, however it ended."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main() -> None:
    install_patches()
    warm_up()
    app = Middleware(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        "127.0.0.1",
        env_int("FLOTILLA_EMULATOR_PORT", 0),
        app,
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    threading.Thread(target=exit_with_parent, name="parent-watch", daemon=True).start()
    print(json.dumps({"port": server.server_port}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
