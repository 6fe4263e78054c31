//! `locus`, the operator CLI. Parses arguments and hands over to [`admin::run`].
fn main() -> std::process::ExitCode {
    admin::main_with_args(std::env::args_os())
}
