//! `cae-proxy dev issuer|transmitter`: one development server on its own, with a NOT FOR
//! PRODUCTION banner, its URLs and copy-paste examples, until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use super::style::{print_commands, Out, Style};
use super::try_it::event_name_list;
use super::{bind, init_quiet_logging, report_error, runtime, stop_signal, DemoError};
use crate::dev::{DevIssuer, DevTransmitter, IssuerOptions, TransmitterOptions};

/// `cae-proxy dev …`: one development server on its own.
#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Development identity provider (discovery, JWKS, /token honouring claims requests). NOT for production.
    Issuer {
        /// Address to listen on (loopback only unless --force-public).
        #[arg(long, default_value = "127.0.0.1:29101")]
        listen: SocketAddr,
        /// `aud` of every token.
        #[arg(long, default_value = "api://cae-demo")]
        audience: String,
        /// Allow a non-loopback address. The issuer signs a token for anyone who asks.
        #[arg(long)]
        force_public: bool,
    },
    /// Development SSF transmitter (JWKS, stream management, push and poll delivery). NOT for production.
    Transmitter {
        /// Address to listen on (loopback only unless --force-public).
        #[arg(long, default_value = "127.0.0.1:29102")]
        listen: SocketAddr,
        /// `aud` of streams and SETs (the receiver's id).
        #[arg(long, default_value = "cae-proxy-demo")]
        audience: String,
        /// Require `Authorization: Bearer <this>` on every /ssf/ and /dev/events call.
        #[arg(long)]
        management_token: Option<String>,
        /// Issuer of the users that `sub` names in `POST /dev/events` (when a request gives no
        /// `iss`): the development issuer's URL by default.
        #[arg(long, default_value = "http://127.0.0.1:29101")]
        subject_issuer: String,
        /// Allow a non-loopback address.
        #[arg(long)]
        force_public: bool,
    },
}

fn banner(out: &mut Out<'_>, what: &str, why: &[&str]) {
    let mut lines = vec![format!("{what}: NOT FOR PRODUCTION")];
    lines.extend(why.iter().map(|l| l.to_string()));
    let inner = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let border = "!".repeat(inner + 8);
    let b = out.s.red(&border);
    out.line(&b);
    for l in lines {
        let pad = " ".repeat(inner - l.chars().count());
        let l = out.s.red(&format!("!!  {l}{pad}  !!"));
        out.line(&l);
    }
    out.line(&b);
}

async fn run_dev(cmd: DevCommand, out: &mut Out<'_>) -> Result<(), DemoError> {
    let (listen, force) = match &cmd {
        DevCommand::Issuer {
            listen,
            force_public,
            ..
        }
        | DevCommand::Transmitter {
            listen,
            force_public,
            ..
        } => (*listen, *force_public),
    };
    if !listen.ip().is_loopback() && !force {
        return Err(DemoError::NotLoopback(listen));
    }
    let listener = bind("development server", listen).await?;
    let public_note = |out: &mut Out<'_>| {
        if !listen.ip().is_loopback() {
            out.warn(&format!(
                "listening on {listen}, reachable from other hosts; URLs below still name \
                 127.0.0.1 (the issuer URL in tokens and metadata)."
            ));
        }
    };
    match cmd {
        DevCommand::Issuer { audience, .. } => {
            let issuer = DevIssuer::start(
                listener,
                IssuerOptions {
                    audience: audience.clone(),
                    ..IssuerOptions::default()
                },
            )?;
            banner(
                out,
                "DEVELOPMENT ISSUER",
                &[
                    "It signs an access token for anyone who asks: no login, no client auth.",
                    "Plain HTTP, throw-away keys that change at every start.",
                ],
            );
            public_note(out);
            out.blank();
            for (k, v) in [
                ("issuer", issuer.issuer_url()),
                ("discovery", issuer.discovery_url()),
                ("jwks", issuer.jwks_url()),
                ("token", issuer.token_url()),
                ("audience", audience),
            ] {
                out.kv(k, &v);
            }
            let t = issuer.token_url();
            let examples = [
                ("# a token (form-encoded); claims: sub, sid, ipaddr, xms_cc, acrs, roles, scp, lifetime_secs".to_string(),
                 format!("curl -s {t} -d sub=alice -d sid=s1 -d ipaddr=127.0.0.1 -d xms_cc=cp1")),
                ("# answer a claims challenge (paste the challenge's claims value)".to_string(),
                 format!("curl -s {t} -d sub=alice --data-urlencode claims=PASTE_CLAIMS")),
                ("# JSON form: any extra claims, a null removes a default claim".to_string(),
                 format!("curl -s {t} -H 'content-type: application/json' -d '{{\"sub\":\"alice\",\"claims\":{{\"roles\":[\"admin\"],\"xms_cc\":[]}},\"lifetime_secs\":600}}'")),
                ("# discovery and keys".to_string(),
                 format!("curl -s {}\ncurl -s {}", issuer.discovery_url(), issuer.jwks_url())),
            ];
            print_examples(out, &examples);
            stop_signal().await?;
            issuer.shutdown();
        }
        DevCommand::Transmitter {
            audience,
            management_token,
            subject_issuer,
            ..
        } => {
            let transmitter = DevTransmitter::start(
                listener,
                TransmitterOptions {
                    audience: audience.clone(),
                    management_token: management_token.clone(),
                    subject_issuer: Some(subject_issuer.clone()),
                    ..TransmitterOptions::default()
                },
            )?;
            banner(
                out,
                "DEVELOPMENT SSF TRANSMITTER",
                &[
                    "It pushes signed security events to any receiver you register.",
                    "Plain HTTP, throw-away keys that change at every start.",
                ],
            );
            public_note(out);
            out.blank();
            let i = transmitter.issuer_url();
            for (k, v) in [
                ("issuer", i.clone()),
                ("configuration", transmitter.configuration_url()),
                ("jwks", transmitter.jwks_url()),
                ("streams", format!("{i}/ssf/stream")),
                ("poll", transmitter.poll_url()),
                ("events", format!("{i}/dev/events")),
                ("audience", audience),
                ("users of", subject_issuer),
            ] {
                out.kv(k, &v);
            }
            let auth = match &management_token {
                Some(t) => format!(" -H 'authorization: Bearer {t}'"),
                None => String::new(),
            };
            let examples = [
                ("# sign a CAEP session-revoked event and push it to cae-proxy's signals listener (the\n# demo's push path and secret); the answer holds the SET and the receiver's status".to_string(),
                 format!("curl -s {i}/dev/events{auth} -H 'content-type: application/json' -d '{{\"event\":\"session-revoked\",\"sub\":\"alice\",\"sid\":\"s1\",\"push_to\":{{\"endpoint_url\":\"http://127.0.0.1:29090/ssf/demo\",\"authorization_header\":\"Bearer demo-push-secret\"}}}}'")),
                (format!("# other events: {}\n# (or a full event-type URI); subject: sub (+ iss), sid, device, tid, email or \"subject\": {{…}};\n# without push_to the event goes to every enabled stream created below; \"deliver\":false only signs", event_name_list()),
                 format!("curl -s {i}/dev/events{auth} -H 'content-type: application/json' -d '{{\"event\":\"account-disabled\",\"sub\":\"alice\",\"deliver\":false}}'")),
                ("# metadata and keys".to_string(),
                 format!("curl -s {}\ncurl -s {}", transmitter.configuration_url(), transmitter.jwks_url())),
                ("# create a push stream to cae-proxy's signals listener (the demo's push path and secret)".to_string(),
                 format!("curl -s {i}/ssf/stream{auth} -H 'content-type: application/json' -d '{{\"delivery\":{{\"method\":\"urn:ietf:rfc:8935\",\"endpoint_url\":\"http://127.0.0.1:29090/ssf/demo\",\"authorization_header\":\"Bearer demo-push-secret\"}},\"events_requested\":[\"https://schemas.openid.net/secevent/caep/event-type/session-revoked\"]}}'")),
                ("# ask for a verification event (use the stream_id returned above)".to_string(),
                 format!("curl -i {i}/ssf/verify{auth} -H 'content-type: application/json' -d '{{\"stream_id\":\"STREAM_ID\",\"state\":\"hello\"}}'")),
                ("# or a poll stream, then poll it (RFC 8936)".to_string(),
                 format!("curl -s {i}/ssf/stream{auth} -H 'content-type: application/json' -d '{{\"delivery\":{{\"method\":\"urn:ietf:rfc:8936\"}}}}'\ncurl -s {}{auth} -H 'content-type: application/json' -d '{{\"returnImmediately\":true}}'", transmitter.poll_url())),
            ];
            print_examples(out, &examples);
            stop_signal().await?;
            transmitter.shutdown();
        }
    }
    Ok(())
}

fn print_examples(out: &mut Out<'_>, examples: &[(String, String)]) {
    print_commands(out, examples);
    out.blank();
    let t = out.s.dim("Ctrl-C stops it.");
    out.line(&format!("  {t}"));
}

/// `cae-proxy dev issuer|transmitter`: runs one development server until Ctrl-C.
pub fn main_dev(cmd: DevCommand) -> ExitCode {
    init_quiet_logging();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return report_error("dev", &e),
    };
    rt.block_on(async move {
        let mut stdout = std::io::stdout();
        let mut out = Out {
            w: &mut stdout,
            s: Style::detect(),
        };
        match run_dev(cmd, &mut out).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report_error("dev", &e),
        }
    })
}
