# Test-only attestation policy: accepts tee `sample` (whose evidence proves
# nothing about the platform) and nothing else. Never loaded by default;
# interop tests upload it through POST /kbs/v0/attestation-policy.
package policy

import data.tellus.lib
import rego.v1

default allow := false

allow if input.tee == "sample"

reasons contains r if {
	input.tee != "sample"
	r := lib.reason("tee", "tee", ["sample"], input.tee, sprintf("tee %s is not sample", [input.tee]))
}
