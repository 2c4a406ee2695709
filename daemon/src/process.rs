//! Hardening of the process itself.

use rustix::process::{setrlimit, Resource, Rlimit};

/// No core dumps: a dump of this process would hold PHI and keys in the clear.
/// Both the soft and hard limit go to zero, and the process is marked
/// non-dumpable (which also keeps other same-uid processes from ptrace).
pub fn disable_core_dumps() -> std::io::Result<()> {
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Files this process creates are private (0600, directories 0700),
/// whatever umask it was started with: sled creates its files with 0644
/// less the umask, so under the usual 022 the database files were readable
/// by every user who could reach them (issue 8). The systemd unit sets
/// `UMask=0077` too; this covers every other way of starting us.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}
