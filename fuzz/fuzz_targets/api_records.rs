//! Fuzz target `api_records`: runs `Target::ApiRecords` of spiderpool-check on each input; any failed
//! check or panic is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spiderpool_check::Target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = Target::ApiRecords.check(data) {
        panic!("{failure}");
    }
});
