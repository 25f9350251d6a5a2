#![no_main]
//! BTF bytes are read from the kernel (or a file named by UPSTRACE_BTF).
use libfuzzer_sys::fuzz_target;
use upstrace::source::probes::btf::Btf;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        let _ = btf.member_offset("sock", &["__sk_common", "skc_daddr"]);
        let _ = btf.member_offset("a", &["b", "c"]);
        let _ = btf.enum_values("skb_drop_reason");
    }
});
