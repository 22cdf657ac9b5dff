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

/// CPU time (user + system) this process has used, in seconds, at the 10 ms
/// resolution of `/proc/self/stat` (clock ticks of 1/100 s: Linux's USER_HZ).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_peak_is_readable() {
        let peak = super::vm("VmHWM").unwrap();
        assert!(peak > 0 && peak >= super::vm("VmRSS").unwrap() / 2);
        assert!(super::cpu_seconds().unwrap() >= 0.0);
    }
}
