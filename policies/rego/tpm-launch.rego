# tellus default attestation policy (tee `tpm`).
#
# Input: the claims of one attestation (policies/README.md).
# Data:  data.reference    reference values {name: [{digest, expires, expired, provenance}]}
#        data.requirements {"host_labels": {key: value}} (optional, verifier-wide)
# Output: allow (bool), reasons (set of reason objects), trust_vector (EAR).
package policy

import data.tellus.lib
import rego.v1

# Features the launch-config record must declare absent.
required_absent := ["introspection", "intervention", "snapshot", "migration"]

# Launch records whose digests must be reference values of the same name.
digest_checked := ["launcher-binary", "kernel", "initrd", "cmdline", "launch-config"]

default allow := false

allow if {
	input.tee == "tpm"
	count(reasons) == 0
}

reasons contains r if {
	input.tee != "tpm"
	r := lib.reason("tee", "tee", ["tpm"], input.tee, sprintf(
		"tee %s is not accepted: this policy trusts only host TPM quotes of a measured launch (tee tpm)",
		[input.tee],
	))
}

reasons contains r if {
	input.tee == "tpm"
	not input.host.enrolled == true
	r := lib.reason("host-enrolled", "host.enrolled", true, object.get(input, ["host", "enrolled"], null), sprintf(
		"host %s is not enrolled with this verifier",
		[object.get(input, ["host", "id"], "?")],
	))
}

reasons contains r if {
	input.tee == "tpm"
	not input.host.activated == true
	r := lib.reason("host-activated", "host.activated", true, object.get(input, ["host", "activated"], null), sprintf(
		"host %s has not proven its AK credential activation",
		[object.get(input, ["host", "id"], "?")],
	))
}

reasons contains r if {
	input.tee == "tpm"
	not input.pcr_replay.verdict == "replays"
	r := lib.reason("pcr-replay", "pcr_replay.verdict", "replays", object.get(input, ["pcr_replay", "verdict"], null), "the launch log does not replay to the quoted launch PCR")
}

reasons contains r if {
	input.tee == "tpm"
	some kind in digest_checked
	r := lib.digest_reason(kind, kind)
}

reasons contains r if {
	input.tee == "tpm"
	have := object.get(input, ["launch", "absent_features"], [])
	some f in required_absent
	not f in have
	r := lib.reason("absent-features", "launch.absent_features", required_absent, have, sprintf(
		"the launch-config record does not declare %s absent",
		[f],
	))
}

reasons contains r if {
	input.tee == "tpm"
	some r in lib.label_reasons(
		object.get(input, ["host", "labels"], {}),
		object.get(data, ["requirements", "host_labels"], {}),
	)
}

failed(rules) if {
	some r in reasons
	r.rule in rules
}

# AR4SI tiers: 2 affirming, 33 unrecognized executables, 36 unsafe
# configuration, 96/97 identity/hardware contraindicated.
tier(rules, _, bad) := bad if {
	failed(rules)
} else := 2

trust_vector := {
	"instance-identity": tier(["host-enrolled", "host-activated"], 2, 96),
	"hardware": tier(["host-enrolled", "host-activated", "pcr-replay"], 2, 97),
	"executables": tier(["launcher-binary", "kernel", "initrd"], 2, 33),
	"configuration": tier(["cmdline", "launch-config", "absent-features", "host-labels"], 2, 36),
} if {
	input.tee == "tpm"
}
