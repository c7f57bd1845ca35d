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
	not kind in lib.digest_ok
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
	labels := object.get(input, ["host", "labels"], {})
	some k, v in lib.required_host_labels
	object.get(labels, k, null) != v
	r := lib.label_reason(labels, k, v)
}

# EAR trust vector: each claim with the rules that decide it and its AR4SI
# tier when one of them fails (2 = affirming otherwise): 33 unrecognized
# executables, 36 unsafe configuration, 96/97 identity/hardware
# contraindicated.
tv_rules := {
	"instance-identity": [["host-enrolled", "host-activated"], 96],
	"hardware": [["host-enrolled", "host-activated", "pcr-replay"], 97],
	"executables": [["launcher-binary", "kernel", "initrd"], 33],
	"configuration": [["cmdline", "launch-config", "absent-features", "host-labels"], 36],
}

failed_rules := {r.rule | some r in reasons}

failed_claims contains claim if {
	some claim, g in tv_rules
	some rule in g[0]
	rule in failed_rules
}

# With no reason every claim is affirming: that case, the common one, skips
# the comprehensions (the interpreter builds every object they make).
trust_vector := {claim: 2 | some claim, _ in tv_rules} if {
	input.tee == "tpm"
	count(reasons) == 0
} else := object.union(
	{claim: 2 | some claim, _ in tv_rules; not claim in failed_claims},
	{claim: g[1] | some claim, g in tv_rules; claim in failed_claims},
) if {
	input.tee == "tpm"
}
