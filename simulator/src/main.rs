//! `simulator`: graph generation and activity replay.

fn main() {
    eprintln!("simulator: not built yet");
    std::process::exit(2);
}
