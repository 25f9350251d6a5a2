//! Empty on purpose: the programs are the `upstrace-ebpf` binary (src/main.rs), built for the
//! BPF target by tracer-user/build.rs. Cargo needs a library target to let tracer-user name this
//! crate as a build-dependency.
#![no_std]
