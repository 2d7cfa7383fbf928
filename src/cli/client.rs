//! Commands that talk to the running daemon over its HTTP API, with the token
//! from `KLAXON_TOKEN` and the address from the config.

use crate::cli::stdout::outln;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use super::output;
use crate::config::Config;
use crate::trigger::{TriggerRequest, TriggerResponse};

/// The daemon's base URL: its listen address, with a wildcard address
/// replaced by loopback.
pub fn base_url(config: &Config) -> String {
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

fn token() -> anyhow::Result<String> {
    match std::env::var("KLAXON_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => bail!(
            "KLAXON_TOKEN is not set; create a token with `klaxon token create --role operator --name NAME` and export it"
        ),
    }
}

async fn call<T: DeserializeOwned>(
    config: &Config,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<T> {
    let base = base_url(config);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .user_agent(format!(
            "{}{}",
            crate::http::origin::CLI_USER_AGENT,
            env!("CARGO_PKG_VERSION")
        ))
        .build()?;
    let mut req = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(token()?);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() {
            anyhow::anyhow!("cannot reach the klaxon daemon at {base}: is `klaxon run` running with this config?")
        } else if e.is_timeout() {
            anyhow::anyhow!("the klaxon daemon at {base} did not answer in time")
        } else {
            anyhow::anyhow!("request to the klaxon daemon at {base} failed: {e}")
        }
    })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        match status.as_u16() {
            401 => bail!("the daemon refused the token in KLAXON_TOKEN (401): {msg}"),
            403 => bail!("the token in KLAXON_TOKEN may not do this (403): {msg}"),
            _ => bail!("the daemon answered {status}: {msg}"),
        }
    }
    serde_json::from_str(&text)
        .with_context(|| format!("unexpected answer from the daemon: {text}"))
}

pub async fn trigger(
    config: &Config,
    req: &TriggerRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let body = serde_json::to_value(req)?;
    let created: TriggerResponse =
        call(config, reqwest::Method::POST, "/api/v1/alerts", Some(body)).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        output::created(&created);
        // The id alone on the last line, for scripts that read it.
        outln!("{}", created.id);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(
    config: &Config,
    id: Option<i64>,
    watch: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(id) = id else {
        let list: serde_json::Value =
            call(config, reqwest::Method::GET, "/api/v1/alerts", None).await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            output::alert_list(&list, &config.server.timezone);
        }
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        let s: serde_json::Value = call(
            config,
            reqwest::Method::GET,
            &format!("/api/v1/alerts/{id}"),
            None,
        )
        .await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            output::alert_status(&s, &config.server.timezone);
        }
        let settled = s["state"] != "sending" && s["state"] != "held";
        if !watch || settled {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        outln!();
    }
}

pub async fn action(
    config: &Config,
    id: i64,
    what: &str,
    message: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let body = message.map(|m| serde_json::json!({ "message": m }));
    action_with(config, id, what, body, json).await
}

/// POSTs `body` (or `{}`) to one of an alert's lifecycle routes and prints the answer.
pub async fn action_with(
    config: &Config,
    id: i64,
    what: &str,
    body: Option<serde_json::Value>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let body = body.unwrap_or_else(|| serde_json::json!({}));
    let v: serde_json::Value = call(
        config,
        reqwest::Method::POST,
        &format!("/api/v1/alerts/{id}/{what}"),
        Some(body),
    )
    .await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    match what {
        "all-clear" | "updates" => {
            let created: TriggerResponse = serde_json::from_value(v)?;
            if what == "all-clear" {
                outln!("All-clear for alert {id} sent; alert {id} is closed.");
            } else {
                outln!("Update for alert {id} sent to the same people.");
            }
            output::created(&created);
            outln!("{}", created.id);
        }
        "cancel" => outln!(
            "Alert {id} cancelled; {} unsent message(s) will not go out.",
            v["unsent"]
        ),
        _ => {
            outln!("Alert {id} approved and sending.");
            output::alert_status(&v, &config.server.timezone);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `klaxon review list`: overrides waiting for a second person's review.
pub async fn reviews(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let v: Vec<serde_json::Value> =
        call(config, reqwest::Method::GET, "/api/v1/reviews", None).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if v.is_empty() {
        outln!("Nothing waits for review.");
    }
    for a in &v {
        let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
        outln!(
            "{}\t{} at {}\tsent by {}\treason: {}",
            a["id"],
            s("title"),
            s("place"),
            a["approved_by"].as_str().unwrap_or(&s("created_by")),
            s("override_reason")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `klaxon review done ID`: marks an override reviewed.
pub async fn review(config: &Config, id: i64, note: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v: serde_json::Value = call(
        config,
        reqwest::Method::POST,
        &format!("/api/v1/alerts/{id}/review"),
        Some(serde_json::json!({ "note": note })),
    )
    .await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!(
            "Alert {id} reviewed by {}.",
            v["reviewed_by"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}
