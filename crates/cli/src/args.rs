//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "stratus",
    version,
    about = "Self-hosted multi-cloud server management",
    propagate_version = true
)]
pub struct Cli {
    /// Control-plane URL.
    #[arg(long, global = true, env = "STRATUS_URL")]
    pub url: Option<String>,
    /// API token (prefer `stratus login`; a token on the command line lands in shell history).
    #[arg(long, global = true, env = "STRATUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where `serve` keeps its state; also where the first admin token is found.
    #[arg(long, global = true, env = "STRATUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane.
    Serve(ServeArgs),
    /// Start an embedded control plane and bring up the example deployment.
    Quickstart(QuickstartArgs),
    /// Save the URL and token other commands use.
    Login(LoginArgs),
    /// Apply a deployment file (TOML or YAML); `--dry-run` prints the plan only.
    Apply(ApplyArgs),
    /// Who am I (the token's user)?
    Whoami,
    #[command(subcommand)]
    Cloud(CatalogCmd),
    #[command(subcommand)]
    Image(ImageCmd),
    #[command(subcommand)]
    Script(CatalogCmd),
    #[command(subcommand)]
    Template(TemplateCmd),
    #[command(subcommand)]
    Deployment(CatalogCmd),
    #[command(subcommand)]
    Server(ServerCmd),
    #[command(subcommand)]
    Array(ArrayCmd),
    /// Run an operational script on a server, or on every server a tag selector picks.
    Run(RunArgs),
    /// Deploy an application archive to the servers a tag selector picks, a few at a time.
    Deploy(DeployArgs),
    /// Log in to a server with managed SSH (your account and key), or run a command there.
    Ssh(SshArgs),
    /// Script runs (boot, operational, decommission).
    #[command(subcommand)]
    Runs(RunsCmd),
    /// One script on many servers (`stratus run SCRIPT --tag SELECTOR`).
    #[command(subcommand)]
    Rollouts(RolloutsCmd),
    /// Durable operations (replaces, rebundles): they go on if the control plane restarts.
    #[command(subcommand)]
    Operation(OperationCmd),
    #[command(subcommand)]
    Credential(CredentialCmd),
    #[command(subcommand)]
    User(UserCmd),
    #[command(subcommand)]
    Token(TokenCmd),
    /// Elastic IP addresses.
    #[command(subcommand)]
    Address(AddressCmd),
    /// The artifact store: buckets and objects (application archives, configuration files).
    #[command(subcommand)]
    Artifact(ArtifactCmd),
    /// The audit log, newest first.
    Audit(AuditArgs),
    /// Operator tasks on the control plane's own state (run on its machine).
    #[command(subcommand)]
    Admin(AdminCmd),
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Copy a stopped control plane's SQLite state (DATA_DIR/stratus.db) into an empty
    /// PostgreSQL database, then start `stratus serve --store` on it (copy master.key too:
    /// credentials stay sealed under it).
    MigrateStore {
        /// The PostgreSQL database (`postgres://USER:PASSWORD@HOST/DB`); prefer STRATUS_STORE.
        #[arg(long, env = "STRATUS_STORE", hide_env_values = true)]
        to: String,
    },
    /// The control plane's background tasks (lifecycle per cloud, drift, arrays, load-balancer
    /// sync, rollouts, garbage collection): each one's last pass, duration, outcome and runs.
    Tasks,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// URL instances reach the control plane at (default: http://LISTEN).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Strand a server whose boot has not finished within this many seconds.
    #[arg(long, default_value_t = 120)]
    pub boot_deadline: u64,
    /// Give a terminating server's decommission scripts this many seconds, all together,
    /// before its instance is destroyed anyway.
    #[arg(long, default_value_t = 120)]
    pub decommission_timeout: u64,
    /// The largest artifact object accepted, in bytes (default 5 GiB).
    #[arg(long, default_value_t = stratus_types::artifact::OBJECT_MAX_DEFAULT)]
    pub artifact_max: u64,
    /// Keep the state in PostgreSQL (`postgres://USER:PASSWORD@HOST/DB`, `?sslmode=verify-full`
    /// for TLS) instead of SQLite in the data directory; replicas share it. Prefer the
    /// environment variable: a command line is visible to every user of the machine.
    #[arg(long, env = "STRATUS_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Keep artifact bytes in an S3 bucket: `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&style=path|virtual]`
    /// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the other usual AWS
    /// sources) instead of DATA_DIR/artifacts. Replicas must share one.
    #[arg(long, env = "STRATUS_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// A CA certificate (PEM file) that signed the HTTPS public URL's certificate: it goes into
    /// every instance's user-data, and agents trust it besides the system's CAs.
    #[arg(long)]
    pub agent_ca: Option<PathBuf>,
    /// Disconnect a client that has not sent a whole request head within this many seconds;
    /// also how long a kept-alive connection may sit idle, and a request body may pause.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,
    /// Open API connections one client address may hold (IPv6: one /64); more get 503.
    /// Behind a load balancer every connection comes from its address: cap per client there
    /// and raise this, or 0 for no cap. Agents' WebSockets do not count.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_ip: usize,
    /// Open API connections in total (0: no cap); more get 503.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Agent sessions (WebSockets) held at once, one per agent; more get 503 (0: no cap).
    #[arg(long, default_value_t = 10_000)]
    pub max_agent_sessions: usize,
    /// Agents reach this control plane through a proxy or NAT: do not require an enrolling
    /// agent's connection to come from its instance's address (EC2 and other clouds that do
    /// not sign instance identities; the local cloud's signed identity is checked anyway).
    #[arg(long)]
    pub agents_behind_proxy: bool,
    /// A certificate (PEM file; repeat for several) whose key signs instance-identity documents
    /// on clouds Stratus does not sign for: AWS's per-region certificate for the RSA-SHA256
    /// `instance-identity/signature`. With any, agents there enrol only with a document it signed.
    #[arg(long = "identity-cert", value_name = "FILE")]
    pub identity_certs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// The deployment file to bring up (default: examples/lb-and-app.toml, or
    /// examples/quickstart.toml with --sandbox).
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// The local cloud's definition.
    #[arg(long, default_value = "examples/local-cloud.toml")]
    pub cloud_file: PathBuf,
    /// Move the local cloud to this private subnet (when 10.77.0.0/22 is taken here).
    #[arg(long)]
    pub subnet: Option<ipnet::Ipv4Net>,
    /// The application's files, uploaded as www/site.tar.gz.
    #[arg(long, default_value = "examples/site")]
    pub site: PathBuf,
    /// Run examples/quickstart.toml on a simulated cloud instead (no root; nothing executes).
    #[arg(long)]
    pub sandbox: bool,
    /// Remove everything the quickstart created.
    #[arg(long)]
    pub down: bool,
    /// Exit once the deployment is up instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Read the token from this file (e.g. DATA_DIR/admin.token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[arg(short, long)]
    pub file: PathBuf,
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct PageArgs {
    /// At most this many (1-1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Follow pages and list everything.
    #[arg(long)]
    pub all_pages: bool,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    List(PageArgs),
    Show {
        name: String,
    },
    /// Create from a file holding one spec (TOML, YAML or JSON).
    Create {
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Create or update from a file holding one spec.
    Put {
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete, with what its create made (refused while something uses it): a cloud's
    /// instances, network and keys on the cloud; an image's native images that Stratus made and
    /// no other image names. The table: docs/API.md, "Deletes remove what their create made".
    Delete {
        name: String,
    },
    /// (clouds) Which size a request resolves to: a name or `cpus=2,memory=4GiB`.
    ResolveSize {
        name: String,
        size: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    #[command(flatten)]
    Catalog(CatalogCmd),
    /// Build a Debian base image with debootstrap on a local cloud and register it (cached:
    /// the same inputs reuse the image built before).
    Build(ImageBuildArgs),
    /// Import a root file system tarball (tar, tar.gz, tar.zst) into a local cloud.
    Import(ImageImportArgs),
    /// Every version of an image: where it came from, whether it is stale (its template
    /// changed since the capture) and who uses it.
    Versions { name: String },
    /// Delete captured versions older than the newest N (and their native images), except
    /// those an array or a live server still uses.
    Gc {
        name: String,
        #[arg(long)]
        keep: u32,
    },
}

#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// The multi-cloud image to register it under.
    #[arg(long, default_value = "debian-12")]
    pub name: String,
    /// The local cloud.
    #[arg(long, default_value = "local")]
    pub cloud: String,
    /// Debian suite (default bookworm).
    #[arg(long)]
    pub suite: Option<String>,
    /// Debian mirror (default http://deb.debian.org/debian).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Replace the default package list (repeat, or separate with commas).
    #[arg(long = "package", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// Add to the default package list (repeat, or separate with commas).
    #[arg(long = "add-package", value_delimiter = ',')]
    pub extra_packages: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImageImportArgs {
    /// The tarball (on the control plane's machine).
    pub file: PathBuf,
    /// The multi-cloud image to register it under.
    #[arg(long)]
    pub name: String,
    /// The local cloud.
    #[arg(long, default_value = "local")]
    pub cloud: String,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    List(PageArgs),
    Show {
        name: String,
    },
    Versions {
        name: String,
    },
    Create {
        #[arg(short, long)]
        file: PathBuf,
    },
    Put {
        #[arg(short, long)]
        file: PathBuf,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    List {
        #[arg(long, short)]
        deployment: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// Tag selector, e.g. `lb:pool=www,!maint:drain`.
        #[arg(long)]
        tag: Option<String>,
        /// Include terminated servers.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a server (id or DEPLOYMENT/NAME).
    Show { server: String },
    Launch {
        name: String,
        #[arg(long, short)]
        deployment: String,
        #[arg(long, short)]
        template: String,
        #[arg(long)]
        cloud: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// A size name or `cpus=2,memory=4GiB`.
        #[arg(long)]
        size: Option<String>,
        /// NAME=VALUE (VALUE may be `cred:NAME`, `env:NAME`, `artifact:BUCKET/KEY`, or text).
        #[arg(long = "input", short = 'i')]
        inputs: Vec<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Wait until it is operational (or stranded).
        #[arg(long)]
        wait: bool,
    },
    Terminate {
        server: String,
        #[arg(long)]
        wait: bool,
    },
    /// Launch a new server like this one, wait until it is operational, move its elastic IPs,
    /// then terminate this one (if the new one strands, this one keeps serving).
    Replace { server: String },
    /// Capture the server as a new image version for an array's next launches. Its agent
    /// first removes the instance's identity, keys, logs and histories (and refuses, changing
    /// nothing, if a secret input's value is stored in a file); then the server leaves its
    /// load balancers and is stopped, captured and terminated.
    Rebundle {
        server: String,
        /// The array (in the server's deployment) whose next launches boot from the image.
        #[arg(long = "for")]
        array: String,
        /// The multi-cloud image to add the version to (default TEMPLATE-bundle).
        #[arg(long)]
        image: Option<String>,
        /// What becomes of the server: `terminate`, or `relaunch` (a fresh server of the same
        /// name; an array member is replaced by its array anyway).
        #[arg(long, default_value = "terminate", value_parser = ["terminate", "relaunch"])]
        then: String,
    },
    /// Reboot the server's instance (same disk and addresses).
    Reboot { server: String },
    /// The end of the instance's console output (init and boot hooks).
    Console { server: String },
    /// Add or remove tags.
    Tag {
        server: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArrayCmd {
    List {
        #[arg(long, short)]
        deployment: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// DEPLOYMENT/NAME
    Show {
        array: String,
    },
    Scale {
        array: String,
        desired: u32,
    },
    Delete {
        array: String,
    },
    /// Build the array's image afresh: launch a builder from the template as it is now, wait
    /// until it is operational, and rebundle it for the array (what a stale image needs).
    Rebundle {
        array: String,
        /// The multi-cloud image to add the version to (default TEMPLATE-bundle).
        #[arg(long)]
        image: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The operational script (one the servers' templates offer).
    pub script: String,
    /// One server: id or deployment/name.
    #[arg(long = "on", conflicts_with = "tag", required_unless_present = "tag")]
    pub server: Option<String>,
    /// Every operational server whose tags match this selector (a rollout).
    #[arg(long)]
    pub tag: Option<String>,
    /// With --tag: only servers of this deployment.
    #[arg(long, requires = "tag")]
    pub deployment: Option<String>,
    /// With --tag and no --deployment: run on matching servers of every deployment (without it,
    /// a selector matching servers of several deployments is refused).
    #[arg(long, requires = "tag", conflicts_with = "deployment")]
    pub all_deployments: bool,
    /// With --tag: how many servers run the script at a time (default 10).
    #[arg(long, requires = "tag")]
    pub concurrency: Option<u32>,
    /// With --tag: failures tolerated before the rollout stops starting new runs (default 0).
    #[arg(long, requires = "tag", default_value_t = 0)]
    pub max_errors: u32,
    /// Kill the script after this many seconds (default: no limit).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// With --on: NAME=VALUE for this run only, overriding the server's (VALUE as in files:
    /// text, `cred:NAME`, `env:NAME`, `artifact:BUCKET/KEY`).
    #[arg(long = "input", short = 'i', conflicts_with = "tag")]
    pub inputs: Vec<String>,
    /// Print the output as it arrives (for a rollout: each server's result as it finishes)
    /// and exit with the result.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The server: deployment/name.
    pub server: String,
    /// The private key (default: the one `stratus user add-key --generate` made, if any;
    /// otherwise ssh's own defaults).
    #[arg(long, short)]
    pub identity: Option<PathBuf>,
    /// Use the private address even when the server has a public one.
    #[arg(long)]
    pub private: bool,
    /// A command to run instead of a shell (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The archive (tar.gz or zip): BUCKET/KEY in the artifact store, or a local file, which is
    /// first uploaded over the archive the servers' template names (so servers launched later
    /// start with it too).
    pub archive: String,
    /// The servers: a tag selector such as `lb:pool=www`.
    #[arg(long)]
    pub to: String,
    /// Only servers of this deployment.
    #[arg(long)]
    pub deployment: Option<String>,
    /// Without --deployment: deploy to matching servers of every deployment (without it, a
    /// selector matching servers of several deployments is refused).
    #[arg(long, conflicts_with = "deployment")]
    pub all_deployments: bool,
    /// Servers deploying at a time (default 1: one server out of rotation at a time).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Failures tolerated before the deploy stops (default 0).
    #[arg(long, default_value_t = 0)]
    pub max_errors: u32,
    /// Kill each deploy after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Print each server's result as it finishes and exit with the result.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    List {
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    Show {
        id: String,
    },
    /// Cancel a run: a queued one at once, a running one through its agent.
    Cancel {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutsCmd {
    List(PageArgs),
    Show {
        id: String,
    },
    /// Stop starting runs, cancel the queued ones and stop the running ones.
    Cancel {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    List {
        /// Only the operations of this server (id or DEPLOYMENT/NAME).
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Where an operation stands: its step, successor, moved addresses or error.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    List(PageArgs),
    Show {
        name: String,
    },
    /// Create a credential; the value is read from stdin (or --value-file), never an argument.
    ///
    /// By default only admins may attach it (name it as `cred:NAME` in an input, or change a
    /// script that receives it) and servers of every deployment may receive it; narrow it with
    /// --deployment, allow operators with --attach operator.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        scope: CredentialScopeArgs,
    },
    /// Replace a credential's value (read like `create`); its description and scope stay as
    /// they are unless given.
    Set {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        scope: CredentialScopeArgs,
    },
    Delete {
        name: String,
    },
}

/// Who may use a credential.
#[derive(Debug, Args)]
pub struct CredentialScopeArgs {
    /// A deployment whose servers may receive the value: a name or a `*`-glob (`prod-*`);
    /// repeat for several (at most 64). Default: `*`, every deployment.
    #[arg(long = "deployment", short = 'd')]
    pub deployments: Vec<String>,
    /// The lowest role allowed to attach it: `admin` (default) or `operator`.
    #[arg(long, value_parser = ["admin", "operator"])]
    pub attach: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    List(PageArgs),
    Show {
        name: String,
    },
    Create {
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// admin, operator, observer, server_login[:DEPLOYMENT], server_superuser[:DEPLOYMENT]
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Where the user may log in (managed SSH), and whether each server applied it.
    Access {
        name: String,
    },
    /// Replace a user's roles.
    Roles {
        name: String,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    Delete {
        name: String,
    },
    /// Register a public key (`--key-file id_ed25519.pub`), or make a new ed25519 key pair
    /// on this machine with `--generate` (the private key never leaves it; `stratus ssh` uses it).
    AddKey {
        name: String,
        #[arg(long, required_unless_present = "generate", conflicts_with = "generate")]
        key_file: Option<PathBuf>,
        #[arg(long)]
        generate: bool,
    },
    RemoveKey {
        name: String,
        fingerprint: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token (printed once).
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        ttl_hours: Option<u32>,
    },
    List {
        user: String,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AddressCmd {
    List(PageArgs),
    Show {
        name: String,
    },
    Allocate {
        name: String,
        #[arg(long)]
        cloud: String,
        #[arg(long)]
        pool: Option<String>,
    },
    Associate {
        name: String,
        server: String,
    },
    Disassociate {
        name: String,
    },
    Release {
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub actor: Option<String>,
    /// Action prefix, e.g. `server.`.
    #[arg(long)]
    pub action: Option<String>,
    /// Target prefix, e.g. `server/example`.
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactCmd {
    /// Make a bucket.
    Mb { bucket: String },
    /// Remove an empty bucket.
    Rb { bucket: String },
    /// List the buckets, or a bucket's objects (`BUCKET` or `BUCKET/PREFIX`).
    Ls {
        path: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Upload a file to BUCKET/KEY (its SHA-256 is checked by the control plane).
    Put { file: PathBuf, path: String },
    /// Download BUCKET/KEY and verify its SHA-256 (`-o -` writes to stdout).
    Get {
        path: String,
        /// Where to write it (default: the key's last segment, in this directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Size and SHA-256 of BUCKET/KEY.
    Info { path: String },
    /// Delete BUCKET/KEY.
    Rm { path: String },
    /// A short-lived URL that fetches BUCKET/KEY without a token.
    Url {
        path: String,
        /// Seconds it works (at most 3600); it stops earlier if your token is revoked.
        #[arg(long, default_value_t = 900)]
        ttl: u64,
    },
}
