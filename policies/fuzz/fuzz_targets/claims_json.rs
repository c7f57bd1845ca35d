//! Claims from untrusted JSON (`policy test --claims`): never panics, and
//! accepted claims serialise back to what a policy sees.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_policies::Claims;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = serde_json::from_slice::<Claims>(data) else { return };
    let v = c.to_json();
    assert_eq!(v["tee"], c.tee());
    assert_eq!(serde_json::from_value::<Claims>(v).unwrap(), c);
});
