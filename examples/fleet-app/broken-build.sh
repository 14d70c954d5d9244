#!/bin/sh
# A "new build" that cannot start, for the rollback demo (examples/local-fleet-broken.yaml):
# it complains the way a real binary with a missing setting would, and exits 1.
echo "fleet-app: fatal: missing required setting 'quorum_size' in ${2#--config=}" >&2
exit 1
