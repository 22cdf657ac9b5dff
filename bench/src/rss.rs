//! Resident memory from `/proc` (Linux): `VmHWM` is the peak resident set.

/// A `Vm*` field of this process's status, in KiB.
pub fn vm(field: &str) -> Option<u64> {
    vm_of("self", field)
}

/// A `Vm*` field of process `pid` (or `self`), in KiB.
pub fn vm_of(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_peak_is_readable() {
        let peak = super::vm("VmHWM").unwrap();
        assert!(peak > 0 && peak >= super::vm("VmRSS").unwrap() / 2);
    }
}
