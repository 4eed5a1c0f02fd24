//! Compares the cluster placers on synthetic fleets and prints a Markdown table per fleet: memory
//! packed, replicas refused, reloads per change and time to decide. With no arguments it runs
//! 10 x 100, 30 x 300 and 100 x 1000 (nodes x versions); `--nodes`, `--versions` and `--seed`
//! pick one fleet instead (defaults 100, 1000 and 1).
//!
//! cargo run --release --example placement -- --nodes 100 --versions 1000 --seed 1

use std::process::ExitCode;

use switchyard_gateway::control::cluster::placer::{Auction, BestFit, Placer};
use switchyard_gateway::control::cluster::simulate::{self, FleetSpec};

const USAGE: &str = "usage: placement [--nodes N] [--versions V] [--seed S]";

fn fleets(args: &[String]) -> Result<Vec<FleetSpec>, String> {
    if args.is_empty() {
        return Ok(vec![
            FleetSpec::new(10, 100, 1),
            FleetSpec::new(30, 300, 1),
            FleetSpec::new(100, 1000, 1),
        ]);
    }
    let mut spec = FleetSpec::new(100, 1000, 1);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what} must be a whole number, not '{value}'"))
        };
        match flag.as_str() {
            "--nodes" => spec.nodes = usize::try_from(number("--nodes")?.max(1)).unwrap_or(1),
            "--versions" => spec.versions = usize::try_from(number("--versions")?).unwrap_or(0),
            "--seed" => spec.seed = number("--seed")?,
            _ => return Err(format!("unknown argument '{flag}'")),
        }
    }
    Ok(vec![spec])
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let specs = match fleets(&args) {
        Ok(specs) => specs,
        Err(problem) => {
            eprintln!("{problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let placers: [&dyn Placer; 2] = [&BestFit, &Auction];
    for spec in &specs {
        let rows = simulate::compare(spec, &placers);
        println!("{}", simulate::markdown(&rows, spec));
    }
    ExitCode::SUCCESS
}
