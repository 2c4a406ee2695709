//! `graph-sim [--listen 127.0.0.1:8089] [--token TOKEN] [--token-header NAME] [--rate-limit N]
//! [--template NAME:LANG[:STATUS[:CATEGORY]]]...`: runs the simulator until
//! Ctrl-C. Point `whatsapp.api_base_url` at the URL it prints.

use graph_sim::{Sim, Template};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut listen = "127.0.0.1:8089".to_owned();
    let mut token = None;
    let mut token_header = None;
    let mut rate = None;
    let mut templates = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--listen", Some(v)) => listen = v,
            ("--token", Some(v)) => token = Some(v),
            ("--token-header", Some(v)) => token_header = Some(v),
            ("--rate-limit", Some(v)) => match v.parse::<u32>() {
                Ok(n) => rate = Some(n),
                Err(_) => return usage("--rate-limit takes a number of messages per second"),
            },
            ("--template", Some(v)) => {
                let mut f = v.split(':');
                let (Some(name), Some(lang)) = (f.next(), f.next()) else {
                    return usage("--template takes NAME:LANG[:STATUS[:CATEGORY]]");
                };
                templates.push(Template {
                    name: name.to_owned(),
                    language: lang.to_owned(),
                    status: f.next().unwrap_or("APPROVED").to_owned(),
                    category: f.next().unwrap_or("UTILITY").to_owned(),
                });
            }
            _ => return usage(&format!("unknown or incomplete argument {arg}")),
        }
    }
    let Ok(addr) = listen.parse() else {
        return usage("--listen takes HOST:PORT, e.g. 127.0.0.1:8089");
    };
    let sim = match Sim::bind(addr).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("graph-sim: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    sim.require_token(token.as_deref());
    sim.token_header(token_header.as_deref());
    sim.rate_limit(rate);
    for t in templates {
        sim.add_template(t);
    }
    eprintln!("graph-sim listening url={}", sim.base_url());
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!("graph-sim: {why}\nusage: graph-sim [--listen HOST:PORT] [--token TOKEN] [--token-header NAME] [--rate-limit N] [--template NAME:LANG[:STATUS[:CATEGORY]]]...");
    ExitCode::from(2)
}
