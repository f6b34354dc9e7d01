//! The `portcullis` command.

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis::server::{self, ProcessFlags};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
portcullis: an edge API gateway on Pingora

usage:
  portcullis -c FILE          serve with this config
  portcullis -t -c FILE       check the config and exit (0: valid, 1: every problem listed)
  portcullis --demo           run demo services and the gateway on conf/demo.yaml

options:
  -c, --conf FILE   config file (YAML)
  -t, --test        validate only
  -d, --daemon      run in the background (Pingora)
  -u, --upgrade     take the listening sockets over from a running instance (Pingora)
      --demo        also start the demo services (default config: conf/demo.yaml)
  -h, --help        this text
  -V, --version     version
";

struct Args {
    conf: Option<PathBuf>,
    test: bool,
    flags: ProcessFlags,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        conf: None,
        test: false,
        flags: ProcessFlags::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--conf" => args.conf = Some(it.next().ok_or("-c needs a file")?.into()),
            "-t" | "--test" => args.test = true,
            "-d" | "--daemon" => args.flags.daemon = true,
            "-u" | "--upgrade" => args.flags.upgrade = true,
            "--demo" => args.flags.demo = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("portcullis {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => {
                if let Some(path) = other.strip_prefix("--conf=") {
                    args.conf = Some(path.into());
                } else {
                    return Err(format!("unknown argument \"{other}\""));
                }
            }
        }
    }
    if args.conf.is_none() && args.flags.demo {
        args.conf = Some("conf/demo.yaml".into());
    }
    if args.conf.is_none() {
        return Err("no config file: use -c FILE (or --demo)".into());
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    portcullis::lifecycle::claim_signals();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let path = args.conf.unwrap_or_default();
    let cfg = match portcullis::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}", errors.report(&path));
            return ExitCode::from(1);
        }
    };
    if args.test {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    server::run(cfg, path, args.flags)
}
