//! The `clinic-relay` binary: all behaviour lives in the library.
fn main() -> std::process::ExitCode {
    clinic_relay::cli::main()
}
