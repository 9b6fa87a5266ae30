//! Agent enrolment: how an instance's agent proves which server it is and gets a credential.
//!
//! 1. At launch the orchestrator writes minimal user-data: the control plane's URL, the
//!    server id and a one-time **enrolment token** (`KeyRing::enrolment_token`, an HMAC of the
//!    server id: recomputable, so a retried launch writes the same user-data, and nothing
//!    secret is stored).
//! 2. The agent reads its user-data and, where the cloud signs one (the local cloud does), its
//!    instance-identity document and signature from the metadata service, and calls
//!    `POST /api/v1/agent/enroll`.
//! 3. The control plane checks, in this order: the server exists and is `booting`; the token
//!    is the server's (constant-time compare); no agent has enrolled for it yet (a token works
//!    once); then the instance ([`check_identity`]). Any failure changes nothing.
//!    - On a cloud that signs identities (its driver has a
//!      `CloudDriver::identity_verifier`; the local cloud does), the document's signature is
//!      the cloud's and it names the server's own instance and private address.
//!    - On every other cloud (EC2, the fake cloud) the token alone does not enrol: the driver
//!      describes the server's instance, which must exist, be pending or running and belong to
//!      the server; an identity document, when sent (the agent sends EC2's), must name that
//!      instance and its private address; and the connection must come from one of the
//!      instance's addresses (private or public, as the cloud reports them) unless the control
//!      plane runs with `--agents-behind-proxy` (`Config::agent_source_check` off), because
//!      behind a proxy or NAT the source is not the instance's.
//!    - With `Config::identity_certificates` (`stratus serve --identity-cert FILE`, AWS's
//!      per-region certificates), the document must carry a signature (RSA-SHA256, the
//!      metadata service's `instance-identity/signature`) by one of them. Without, the document
//!      is a claim only: an agent that read another instance's metadata and user-data could
//!      forge it, but not the source address (with the source check on) nor an instance that
//!      is not the server's.
//! 4. It answers with a per-instance **agent credential** (`stratus_agent_…`, 32 random bytes;
//!    only its SHA-256 is kept) that the agent keeps on the instance (0600) and presents as a
//!    bearer token from then on. An agent credential only ever acts as its own server; user
//!    tokens are not accepted on agent routes and agent credentials not on user routes.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stratus_store::{Change, Kind, Resource, TypedStore};
use stratus_types::server::{Server, ServerState};
use stratus_types::{RunId, ServerId};

use super::{Actor, App, AppError, audit};
use crate::crypto::random_bytes;

/// What the control plane keeps of an enrolled agent (id = the server id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRecord {
    pub server: ServerId,
    /// The instance the agent enrolled from.
    pub instance_id: String,
    /// SHA-256 (hex) of the agent credential.
    pub credential_hash: String,
    pub enrolled_at: DateTime<Utc>,
    pub revision: u32,
    /// The desired-state generation last issued for this server (0: none yet). It counts up
    /// each time what the agent should hold changes: a new boot, new tags.
    #[serde(default)]
    pub generation: u64,
    /// The generation the agent last reported applied.
    #[serde(default)]
    pub applied_generation: u64,
    /// The boot identity of the agent's last hello; a different one means the instance rebooted.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The runs of the server's current boot, in order.
    #[serde(default)]
    pub boot_runs: Vec<RunId>,
    /// The managed files of the desired state, by path, as the agent last reported them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files: std::collections::BTreeMap<String, FileState>,
}

/// Where one managed file stands on the instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileState {
    /// The content the agent last tried to apply.
    pub sha256: String,
    /// The file holds that content.
    pub applied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    /// The content whose failure to apply was audited: one audit entry per content, however
    /// many different errors an agent reports for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_audited: Option<String>,
}

impl Resource for AgentRecord {
    const KIND: Kind = Kind::Agent;
    fn id_string(&self) -> String {
        self.server.to_string()
    }
    /// Looked up by credential hash, like API tokens.
    fn name_string(&self) -> String {
        self.credential_hash.clone()
    }
    fn scope(&self) -> String {
        "agent".into()
    }
    fn revision(&self) -> u32 {
        self.revision
    }
    fn set_revision(&mut self, r: u32) {
        self.revision = r;
    }
    fn created_at(&self) -> DateTime<Utc> {
        self.enrolled_at
    }
    fn updated_at(&self) -> DateTime<Utc> {
        self.enrolled_at
    }
    fn set_updated_at(&mut self, _: DateTime<Utc>) {}
}

/// What an agent sends to enrol.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub server_id: ServerId,
    pub enrolment_token: String,
    /// The instance-identity document exactly as the metadata service returned it.
    #[serde(default)]
    pub identity_document: Option<String>,
    /// Its signature (base64), from `/latest/dynamic/instance-identity/signature`.
    #[serde(default)]
    pub identity_signature: Option<String>,
}

/// What an enrolled agent gets: its credential, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Enrolled {
    pub server_id: ServerId,
    pub agent_token: String,
}

const AGENT_TOKEN_PREFIX: &str = "stratus_agent_";

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compare without leaking where the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user-data the orchestrator writes for a server's instance.
pub fn user_data(app: &App, server: &Server, url: &str) -> Vec<u8> {
    let token = app.keys.enrolment_token(&server.id.to_string());
    let mut ud = serde_json::json!({
        "stratus_url": url,
        "server_id": server.id,
        "enrolment_token": token,
    });
    // A private CA the agent gateway's certificate chains to (`stratus serve --agent-ca`).
    if let Some(ca) = &app.settings.agent_ca_pem {
        ud["ca_pem"] = ca.clone().into();
    }
    serde_json::to_vec(&ud).unwrap_or_default()
}

/// Enrol an agent; `peer` is the address its connection came from (when known).
pub async fn enrol(app: &App, req: &EnrolRequest, peer: Option<std::net::IpAddr>) -> Result<Enrolled, AppError> {
    // One answer for every way a token can be wrong: a caller learns nothing about servers.
    let refused = || AppError::Unauthenticated;
    if req.enrolment_token.len() > 128 {
        return Err(refused());
    }
    let id = req.server_id.to_string();
    let server: Server = app.store.get_as(&id).await?.ok_or_else(refused)?;
    if !same(&app.keys.enrolment_token(&id), &req.enrolment_token) {
        return Err(refused());
    }
    if server.state != ServerState::Booting {
        return Err(AppError::BadState(format!(
            "server {}/{} is {}; an agent enrols while its server is booting",
            server.deployment, server.name, server.state
        )));
    }
    if app.store.get_as::<AgentRecord>(&id).await?.is_some() {
        return Err(AppError::Conflict(format!(
            "an agent has already enrolled for server {}/{}; enrolment tokens work once",
            server.deployment, server.name
        )));
    }
    let instance_id = server.instance_id.clone().ok_or_else(refused)?;
    check_identity(app, &server, &instance_id, req, peer).await?;
    let raw: [u8; 32] = random_bytes()?;
    let token = format!(
        "{AGENT_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let record = AgentRecord {
        server: server.id,
        instance_id: instance_id.clone(),
        credential_hash: hash(&token),
        enrolled_at: Utc::now(),
        revision: 1,
        generation: 0,
        applied_generation: 0,
        boot_id: None,
        boot_runs: vec![],
        files: Default::default(),
    };
    let actor = Actor::agent(&server);
    let target = format!("server/{}/{}", server.deployment, server.name);
    app.commit(vec![
        Change::insert(&record),
        audit(
            &actor,
            "agent.enrol",
            target,
            serde_json::json!({ "instance": instance_id }),
        ),
    ])
    .await?;
    Ok(Enrolled {
        server_id: server.id,
        agent_token: token,
    })
}

/// On a cloud that signs instance identities, the document must be signed by it and name the
/// server's own instance and address; on any other cloud, the instance must be the server's as
/// its driver describes it ([`check_described`]).
async fn check_identity(
    app: &App,
    server: &Server,
    instance_id: &str,
    req: &EnrolRequest,
    peer: Option<std::net::IpAddr>,
) -> Result<(), AppError> {
    let driver = app.drivers.for_cloud(&*app.store, &server.cloud).await?;
    let Some(verifier) = driver.identity_verifier() else {
        return check_described(app, &*driver, server, instance_id, req, peer).await;
    };
    let (Some(doc), Some(sig)) = (&req.identity_document, &req.identity_signature) else {
        return Err(AppError::invalid(
            "identity_document",
            "this cloud signs instance identities: send the document and signature from the metadata service",
        ));
    };
    let parsed = verifier
        .verify(doc.as_bytes(), sig.trim())
        .map_err(|_| AppError::Unauthenticated)?;
    let ip_matches = server.private_ip == Some(parsed.private_ip);
    if parsed.instance_id != instance_id || !ip_matches {
        return Err(AppError::Unauthenticated);
    }
    Ok(())
}

/// What an EC2-style identity document claims (the fields we check; others are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimedIdentity {
    instance_id: String,
    #[serde(default)]
    private_ip: Option<std::net::IpAddr>,
}

/// Where the cloud signs nothing: the instance as the driver describes it must be the server's,
/// alive, agree with the document the agent sent (if any), and — unless agents come through a
/// proxy — be where the connection comes from. Every refusal is the same `401`, logged with
/// its reason.
async fn check_described(
    app: &App,
    driver: &dyn stratus_cloud::CloudDriver,
    server: &Server,
    instance_id: &str,
    req: &EnrolRequest,
    peer: Option<std::net::IpAddr>,
) -> Result<(), AppError> {
    use stratus_cloud::InstanceState;
    let refuse = |why: &str| {
        tracing::warn!(server = %server.name, deployment = %server.deployment, instance = %instance_id, ?peer, why, "enrolment refused");
        Err(AppError::Unauthenticated)
    };
    let described = driver.describe(instance_id).await.map_err(|source| AppError::Cloud {
        context: format!("cannot describe instance {instance_id} to check an enrolling agent"),
        source,
    })?;
    let Some(instance) = described else {
        return refuse("the cloud does not know the instance");
    };
    if instance.server != server.id || instance.id != instance_id {
        return refuse("the instance belongs to another server");
    }
    if !matches!(instance.state, InstanceState::Pending | InstanceState::Running) {
        return refuse("the instance is not running");
    }
    if !app.settings.identity_certificates.is_empty() {
        let (Some(doc), Some(sig)) = (&req.identity_document, &req.identity_signature) else {
            return refuse("no signed identity document (identity certificates are configured)");
        };
        if !signed_by_any(&app.settings.identity_certificates, doc.as_bytes(), sig.trim()) {
            return refuse("the identity document's signature is not by a configured certificate");
        }
    }
    if let Some(doc) = &req.identity_document {
        let Ok(claim) = serde_json::from_str::<ClaimedIdentity>(doc) else {
            return refuse("the identity document is not one");
        };
        if claim.instance_id != instance_id {
            return refuse("the identity document names another instance");
        }
        if let (Some(claimed), Some(actual)) = (claim.private_ip, instance.private_ip)
            && claimed != actual
        {
            return refuse("the identity document names another address");
        }
    }
    let addresses: Vec<std::net::IpAddr> = [instance.private_ip, instance.public_ip]
        .into_iter()
        .flatten()
        .collect();
    // An instance the cloud gives no address yet cannot be told from anyone else: refused (the
    // agent retries with backoff), never enrolled on the token alone.
    if app.settings.agent_source_check && !peer.is_some_and(|p| addresses.contains(&p)) {
        return refuse(if addresses.is_empty() {
            "the cloud reports no address for the instance yet, so the connection cannot be checked"
        } else {
            "the connection does not come from the instance's addresses (behind a proxy or NAT? see --agents-behind-proxy)"
        });
    }
    Ok(())
}

/// Read PEM certificates (each may hold several) into DER, for [`signed_by_any`].
pub fn parse_certificates(pems: &[String]) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut out = vec![];
    for (i, pem) in pems.iter().enumerate() {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("identity certificate {}: not PEM: {e}", i + 1))?;
        if certs.is_empty() {
            return Err(format!("identity certificate {}: no certificate in it", i + 1));
        }
        for c in certs {
            webpki::EndEntityCert::try_from(&c)
                .map_err(|e| format!("identity certificate {}: not a usable X.509 certificate: {e}", i + 1))?;
            out.push(c.as_ref().to_vec());
        }
    }
    Ok(out)
}

/// Whether `signature` (base64) is an RSA-SHA256 signature of `doc` by one of `certs` (DER).
fn signed_by_any(certs: &[Vec<u8>], doc: &[u8], signature: &str) -> bool {
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature.replace(['\n', '\r'], "")) else {
        return false;
    };
    certs.iter().any(|der| {
        let der = rustls_pki_types::CertificateDer::from(der.as_slice());
        webpki::EndEntityCert::try_from(&der).is_ok_and(|cert| {
            cert.verify_signature(webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256, doc, &sig)
                .is_ok()
        })
    })
}

/// Which server holds this agent credential? Unknown and malformed credentials get the same
/// answer; so does the credential of an agent whose server has been terminated.
pub async fn authenticate(app: &App, token: &str) -> Result<(AgentRecord, Server), AppError> {
    let (record, server) = identify(app, token).await?;
    if server.state == ServerState::Terminated {
        return Err(AppError::Unauthenticated);
    }
    Ok((record, server))
}

/// Whose agent credential this is, even if its server was terminated (the connect route then
/// tells the agent to stop instead of leaving it to retry a refused credential forever).
pub async fn identify(app: &App, token: &str) -> Result<(AgentRecord, Server), AppError> {
    if !token.starts_with(AGENT_TOKEN_PREFIX) || token.len() > 128 {
        return Err(AppError::Unauthenticated);
    }
    let record: AgentRecord = app
        .store
        .find_as("agent", &hash(token))
        .await?
        .ok_or(AppError::Unauthenticated)?;
    let server: Server = app
        .store
        .get_as(&record.server.to_string())
        .await?
        .ok_or(AppError::Unauthenticated)?;
    if server.instance_id.as_deref() != Some(record.instance_id.as_str()) {
        return Err(AppError::Unauthenticated);
    }
    Ok((record, server))
}
