//! Argument parsing shared by the launcher's bench binaries.

/// The number after `name` on the bench's command line (`-- --runs 5`), or
/// `default` where it is not given; panics on a value that is not a number.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}
