//! Fuzz target `cni_call`: runs `Target::CniCall` of spiderpool-check on each input; any failed
//! check or panic is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spiderpool_check::Target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = Target::CniCall.check(data) {
        panic!("{failure}");
    }
});
