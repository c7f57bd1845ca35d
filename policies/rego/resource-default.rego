# tellus default resource policy.
#
# Input: {"resource": {"path", "required_labels"},
#         "ear": {"status", "tee", "trust_vector", "reasons"},
#         "claims": <the attestation's claims>}
# Output: allow (bool), reasons (set of reason objects).
#
# A resource is released only to a session (or token) whose attestation
# result is affirming, from a host whose labels carry every label the
# resource was uploaded with (`?required-labels=` on upload).
package policy

import data.tellus.lib
import rego.v1

default allow := false

status := object.get(input, ["ear", "status"], "none")

allow if {
	status == "affirming"
	count(reasons) == 0
}

# The attestation's own reasons explain a result that is not affirming.
reasons contains r if {
	status != "affirming"
	some r in object.get(input, ["ear", "reasons"], [])
}

reasons contains r if {
	status != "affirming"
	count(object.get(input, ["ear", "reasons"], [])) == 0
	r := lib.reason("ear-status", "ear.status", "affirming", status, sprintf(
		"the attestation result is %s, not affirming",
		[status],
	))
}

reasons contains r if {
	labels := object.get(input, ["claims", "host", "labels"], {})
	some k, v in object.get(input, ["resource", "required_labels"], {})
	object.get(labels, k, null) != v
	r := lib.label_reason(labels, k, v)
}
