fn main() -> std::process::ExitCode {
    bootsecrets::cli::main()
}
