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
