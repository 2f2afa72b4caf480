//! The `ipam-eks` CNI plugin binary: environment and stdin in, result or error JSON out.

use std::io::Read;
use std::io::Write;

use ipam_cni_plugin::Outcome;
use ipam_cni_plugin::spec::CniError;
use ipam_cni_plugin::spec::ErrorCode;
use ipam_cni_plugin::spec::Version;

fn main() {
    let outcome = std::panic::catch_unwind(invoke).unwrap_or_else(|_| {
        // A panic is a bug; still answer the runtime in the spec's terms.
        let error = CniError::new(
            ErrorCode::AgentFailed,
            "the ipam-eks plugin crashed (a bug); see its stderr",
        );
        Outcome::failure(&error, Version::CURRENT)
    });
    let mut stdout = std::io::stdout().lock();
    // Nothing useful is left to do when stdout is gone.
    let _ = stdout.write_all(&outcome.stdout).and_then(|()| stdout.flush());
    std::process::exit(outcome.exit_code);
}

fn invoke() -> Outcome {
    let mut stdin = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut stdin) {
        let error = CniError::new(
            ErrorCode::Io,
            format!("reading the network configuration from stdin failed: {error}"),
        );
        return Outcome::failure(&error, Version::CURRENT);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let error = CniError::new(ErrorCode::Io, format!("starting the plugin's runtime failed: {error}"));
            return Outcome::failure(&error, ipam_cni_plugin::config::version_hint(&stdin));
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    runtime.block_on(ipam_cni_plugin::run(&env, &stdin))
}
