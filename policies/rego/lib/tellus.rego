# tellus policy helper library (package tellus.lib).
#
# Import it with `import data.tellus.lib`. Every helper that judges
# something returns a *reason*: an object
#   {"rule", "claim", "expected", "found", "message"}
# that the verifier shows, unchanged, in its logs and in the 403 detail of a
# denied resource request. A policy collects them in its `reasons` set and
# allows when that set is empty.
#
# Cost: regorus evaluates every rule of this package (not its functions)
# the first time a policy refers to any part of it, so the package keeps
# few rules; helpers that only explain a failure are functions.
package tellus.lib

import rego.v1

# Record kinds whose reference values are file digests (the record payload's
# `sha256`/`sha384`); all other kinds are compared by record digest.
file_kinds := {"launcher-binary", "vmm-binary", "firmware", "kernel", "initrd", "console-log"}

# A reason object.
reason(rule, claim, expected, found, message) := {
	"rule": rule,
	"claim": claim,
	"expected": expected,
	"found": found,
	"message": message,
}

# Kinds that may occur more than once in a launch (after its separator).
repeatable_kinds := {"stop", "reboot", "console-log"}

# Record number of the launch's separator: what comes after it (stop,
# reboot, console log) is not part of what was launched. Undefined without
# one; two make evaluation fail (the verifier refuses both).
separator_recnum := r.recnum if {
	some r in input.launch.records
	r.kind == "separator"
}

# The record of `kind` in the attested launch, before its separator
# (undefined when it has none; each kind occurs once there: the verifier
# refuses a launch that repeats one).
record(kind) := r if {
	not kind in repeatable_kinds
	some r in input.launch.records
	r.kind == kind
	r.recnum < separator_recnum
}

# The digests compared with reference values for `kind`: file digests for
# file records, record digests otherwise ({alg: "alg:hex"}). Undefined when
# the record has none.
compared_digests(kind) := {"sha256": r.file.sha256, "sha384": r.file.sha384} if {
	kind in file_kinds
	r := record(kind)
}

compared_digests(kind) := record(kind).record_digests if {
	not kind in file_kinds
}

# Kinds one of whose compared digests (see `compared_digests`) is a live
# reference value of the same name: the fast path of a policy, one pass
# over the records that builds no intermediate object (regorus's cost is
# mostly the objects and sets it builds).
digest_ok contains r.kind if {
	some r in input.launch.records
	r.kind in file_kinds
	not r.kind in repeatable_kinds
	r.recnum < separator_recnum
	some d in [r.file.sha256, r.file.sha384]
	d in data.reference_live[r.kind]
}

digest_ok contains r.kind if {
	some r in input.launch.records
	not r.kind in file_kinds
	not r.kind in repeatable_kinds
	r.recnum < separator_recnum
	some d in r.record_digests
	d in data.reference_live[r.kind]
}

# The claim path that holds the digests compared for `kind`.
digest_claim(kind) := sprintf("launch.records[%s].file", [kind]) if {
	kind in file_kinds
}

digest_claim(kind) := sprintf("launch.records[%s].record_digests", [kind]) if {
	not kind in file_kinds
}

# (Only base documents are read here, never `data` as a whole: that would
# evaluate every rule of every loaded package.)

# Reference values named `name` that have not expired, as digests.
live(name) := [v.digest | some v in data.reference[name]; not v.expired]

# Reference values named `name` that have expired.
expired(name) := [v | some v in data.reference[name]; v.expired]

# Whether one of `digests` is a live reference value named `name`.
matches(digests, name) if {
	some d in digests
	d in data.reference_live[name]
}

# Host labels every host must carry (`required_host_labels` of the
# verifier configuration), {} when none.
default required_host_labels := {}

required_host_labels := data.requirements.host_labels

# The digest shown in a message: SHA-384 where there is one, abbreviated.
shown(digests) := short(digests.sha384) if {
	digests.sha384
} else := short(digests.sha256) if {
	digests.sha256
} else := "(no digest)"

short(d) := sprintf("%s…", [substring(d, 0, 19)]) if {
	count(d) > 19
} else := d

# The reason a launch fails the reference values `name` for its `kind`
# record; undefined when a digest matches.
digest_reason(kind, name) := r if {
	not record(kind)
	r := reason(kind, sprintf("launch.records[%s]", [kind]), live(name), null, sprintf(
		"the launch has no %s record, but reference values \"%s\" require one",
		[kind, name],
	))
}

digest_reason(kind, name) := r if {
	record(kind)
	not compared_digests(kind)
	r := reason(kind, digest_claim(kind), live(name), null, sprintf(
		"the launch's %s record carries no digest to compare with reference values \"%s\"",
		[kind, name],
	))
}

digest_reason(kind, name) := r if {
	ds := compared_digests(kind)
	not matches(ds, name)
	r := reason(kind, digest_claim(kind), live(name), ds, mismatch_message(kind, name, ds))
}

mismatch_message(kind, name, ds) := msg if {
	some e in expired(name)
	e.digest in {d | some d in ds}
	msg := sprintf("%s digest %s matches reference value \"%s\" only in an entry that expired at %s", [
		kind, shown(ds), name, e.expires,
	])
} else := sprintf("%s digest %s not in reference values \"%s\" (%d entries%s)", [
	kind, shown(ds), name, count(live(name)), expired_note(name),
])

expired_note(name) := sprintf(", %d expired", [count(expired(name))]) if {
	count(expired(name)) > 0
} else := ""

# Reasons why host `labels` do not meet `required` ({key: value}).
label_reasons(labels, required) := {r |
	some k, v in required
	object.get(labels, k, null) != v
	r := label_reason(labels, k, v)
}

# The reason host `labels` lack `k=v`.
label_reason(labels, k, v) := reason("host-labels", sprintf("host.labels.%s", [k]), sprintf("%s=%s", [k, v]), found, sprintf(
	"host label %s is %s, but %s=%s is required",
	[k, label_text(found), k, v],
)) if {
	found := object.get(labels, k, null)
}

label_text(v) := "missing" if {
	v == null
} else := sprintf("%s", [v])
