//! Bring your own programs: any compiled BPF ELF object as a chain entry,
//! loaded the way the projects the lab is for load theirs: with libbpf
//! (CO-RE relocation, maps, data sections), through `libbpf-rs`.
//!
//! - [`spec`]: `program = { object = "x.o", … }` in a scenario, checked
//!   against the object itself (file:line:col errors).
//! - [`load`]: load, prepare (constants, shared maps, map contents, tail
//!   calls), attach (TCX or netlink, like any entry), count, dump maps.
//! - [`inspect`]: `tclab inspect` and the per-kernel dry run ([`dry_run`]).
//! - [`btf`]: typed values in and out of maps and globals.

pub mod btf;
pub mod elf;
pub mod inspect;
pub mod libbpf;
pub mod load;
pub mod spec;

pub use inspect::{DryRun, Inspection, LoadCheck, dry_run, inspect};
pub use load::{ByoError, LoadedObject, MapDump, Pins, RawElement};
pub use spec::ObjectProgram;
