//! Served things: a command to `<base>.<ns>` (or below) runs a program whose arguments are
//! filled from the command's data, writes a file, or POSTs the data to a URL; the outcome is
//! the command's reply.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use tokio::sync::Semaphore;

use crate::config::{Serve, ServeAction};
use crate::health::Health;
use crate::poll::{parse_output, run_program};
use crate::template::{check_data, Bools, Template};
use crate::web::Web;

/// Carries out one command: checks the data against the templates, fills them and acts.
///
/// # Errors
/// The reason given to the caller.
pub async fn act(
    action: &ServeAction,
    data: &Value,
    timeout: Duration,
    web: &Web,
) -> Result<Value, String> {
    match action {
        ServeAction::Command(templates) => {
            let refs: Vec<&Template> = templates.iter().collect();
            check_data(&refs, data)?;
            let argv = templates
                .iter()
                .map(|t| t.fill(data, Bools::Words))
                .collect::<Result<Vec<String>, String>>()?;
            let out = run_program(&argv, timeout).await?;
            Ok(json!({"exit": 0, "stdout": parse_output(&out)}))
        }
        ServeAction::File { path, write } => {
            check_data(&[write], data)?;
            let text = write.fill(data, Bools::Digits)?;
            tokio::time::timeout(timeout, tokio::fs::write(path, text.as_bytes()))
                .await
                .map_err(|_| format!("writing {} took longer than {timeout:?}", path.display()))?
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(json!({"written": text}))
        }
        ServeAction::Http(url) => {
            let url = url.clone();
            let data = data.clone();
            let web = web.clone();
            tokio::task::spawn_blocking(move || {
                let (_, body) = web.post_json(&url, &data, timeout)?;
                Ok(parse_output(&body))
            })
            .await
            .map_err(|e| format!("the HTTP call stopped: {e}"))?
        }
    }
}

/// Registers a `[[serve]]` with the adaptor. The work runs on `runtime` (the agent's, which
/// has the process driver), at most `serve.concurrency` at once; more are refused as busy.
///
/// # Errors
/// When the adaptor cannot serve.
pub fn install(
    adaptor: &Adaptor,
    base: &thingsbus_protocol::Namespace,
    serve: &Serve,
    health: Arc<Health>,
    web: Web,
    runtime: tokio::runtime::Handle,
) -> Result<(), thingsbus_adaptor::Error> {
    let sub = base.join(serve.ns.as_str())?;
    let slots = Arc::new(Semaphore::new(serve.concurrency));
    let action = Arc::new(serve.action.clone());
    let timeout = serve.timeout;
    let name = serve.ns.as_str().to_owned();
    adaptor.serve(sub.as_str(), move |_ns, data, _deadline| {
        let slots = slots.clone();
        let action = action.clone();
        let health = health.clone();
        let name = name.clone();
        let runtime = runtime.clone();
        let web = web.clone();
        async move {
            let Ok(permit) = slots.try_acquire_owned() else {
                let e = "busy: as many commands as `concurrency` allows are running; try again"
                    .to_owned();
                health.served(&name, Err(&e));
                return Err(e);
            };
            let outcome = runtime
                .spawn(async move {
                    let r = act(&action, &data, timeout, &web).await;
                    drop(permit);
                    r
                })
                .await
                .unwrap_or_else(|e| Err(format!("the action stopped: {e}")));
            health.served(&name, outcome.as_ref().map(|_| ()).map_err(String::as_str));
            outcome
        }
    })
}
