//! Minimal BPF classifiers built from raw instructions with bpf(2), so the
//! tests need neither clang nor a prebuilt object.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// TC verdicts (direct-action return codes).
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_UNSPEC: i32 = -1;

fn put(attr: &mut [u8], off: usize, bytes: &[u8]) {
    attr[off..off + bytes.len()].copy_from_slice(bytes);
}

/// Load `r0 = verdict; exit` as a SCHED_CLS program named `name`.
pub fn load_classifier(name: &str, verdict: i32) -> OwnedFd {
    // BPF_ALU64|BPF_MOV|BPF_K to r0, then BPF_JMP|BPF_EXIT.
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&verdict.to_le_bytes());
    insns[8] = 0x95;
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    put(&mut attr, 4, &2u32.to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes());
    put(&mut attr, 28, &(log.len() as u32).to_ne_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    let n = name.len().min(15);
    put(&mut attr, 48, &name.as_bytes()[..n]);
    // SAFETY: attr, insns, license and log outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        let end = log.iter().position(|&b| b == 0).unwrap_or(0);
        panic!("BPF_PROG_LOAD {name}: {}; log: {}", std::io::Error::last_os_error(), String::from_utf8_lossy(&log[..end]));
    }
    // SAFETY: a fresh fd returned by the kernel.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The kernel id of a loaded program.
pub fn prog_id(prog: &OwnedFd) -> u32 {
    let mut info = [0u8; 256];
    let mut attr = [0u8; 16];
    put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 4, &(info.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: attr and info outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_ptr(), attr.len()) };
    assert!(ret == 0, "BPF_OBJ_GET_INFO_BY_FD: {}", std::io::Error::last_os_error());
    u32::from_ne_bytes([info[4], info[5], info[6], info[7]])
}
