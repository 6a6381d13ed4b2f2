//! A fleet of fake agents in one process: `Hypervisor` objects, heartbeat
//! Leases and the agent HTTP API for many nodes, whose jobs end after a set
//! time without libvirt. For measuring and testing the controller at a
//! scale the two-node lab cannot reach; migrations of real guests are the
//! lab tests' business.
//!
//! Every node's API is served by one listener under `/n/<node>`; each
//! node's endpoint in its Hypervisor status carries that prefix. The fleet
//! counts jobs running at once, per source, per target and in all, so a
//! test can check the controller's limits from the agents' side.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kvmotion_api::agent::{
    DomainPresence, ErrorBody, JobPhase, JobStatus, PrepareRequest, PrepareResponse, StartRequest,
};
use kvmotion_api::hypervisor::{DomainInfo, DomainState, Hypervisor};
use kvmotion_api::migration::{MigrationProgress, MigrationResult};
use serde_json::json;

use crate::scope::{SCOPE_LABEL, Scope};

/// Field manager of the fleet's writes.
const MANAGER: &str = "kvmotion-fake-fleet";
/// Namespace of the agents' heartbeat Leases.
const AGENT_NAMESPACE: &str = "kvmotion-system";
/// Memory of every fake guest.
pub const VM_MEMORY: u64 = 256 << 20;

/// The shape of a fleet.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Hypervisor nodes.
    pub nodes: usize,
    /// Running guests on each node at the start.
    pub vms_per_node: usize,
    /// How long each job runs before it completes.
    pub job: Duration,
    /// The bearer token callers must present.
    pub token: String,
}

/// Peaks of jobs running at once, as the agents saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peaks {
    /// In the whole fleet.
    pub total: usize,
    /// Leaving any one node.
    pub outbound: usize,
    /// Arriving on any one node.
    pub inbound: usize,
    /// Jobs started in all.
    pub started: usize,
    /// Start calls for a migration id that already had a job (idempotent
    /// repeats, answered with the existing job).
    pub repeated_starts: usize,
}

struct Job {
    source: String,
    target: String,
    vm: String,
    started: Instant,
    phase: JobPhase,
}

#[derive(Default)]
struct State_ {
    /// Per node: guests by uuid.
    domains: HashMap<String, BTreeMap<String, DomainInfo>>,
    jobs: HashMap<String, Job>,
    running_out: HashMap<String, usize>,
    running_in: HashMap<String, usize>,
    running: usize,
    peaks: Peaks,
    /// Nodes whose guests changed since their inventory was last written.
    changed: std::collections::BTreeSet<String>,
}

type Shared = Arc<(Mutex<State_>, FleetSpec)>;

/// A running fleet; its Hypervisors go with the scope, its Leases and
/// server with the fleet.
pub struct Fleet {
    shared: Shared,
    /// Node names, in order.
    pub nodes: Vec<String>,
    scope_id: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The name of guest `i` on node `n` of a fleet in `scope`.
pub fn vm_name(scope: &Scope, node: usize, i: usize) -> String {
    scope.name(&format!("vm{node:02}-{i:03}"))
}

fn vm_uuid(node: usize, i: usize) -> String {
    format!("00000000-0000-4000-8000-{:06}{:06}", node, i)
}

impl Fleet {
    /// Serves the fleet's API, publishes its Hypervisors (labelled with the
    /// scope) and keeps its Leases fresh.
    pub async fn start(scope: &Scope, spec: FleetSpec) -> Fleet {
        let nodes: Vec<String> = (0..spec.nodes)
            .map(|n| scope.name(&format!("fake{n:02}")))
            .collect();
        let mut state = State_::default();
        for (n, node) in nodes.iter().enumerate() {
            let guests = (0..spec.vms_per_node)
                .map(|i| {
                    let d = guest(vm_name(scope, n, i), vm_uuid(n, i));
                    (d.uuid.clone(), d)
                })
                .collect();
            state.domains.insert(node.clone(), guests);
        }
        let shared: Shared = Arc::new((Mutex::new(state), spec));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fleet listener");
        let addr = listener.local_addr().expect("fleet address");
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = scope.cp.client().await;
        let hv: Api<Hypervisor> = Api::all(client.clone());
        for node in &nodes {
            publish(
                &hv,
                scope,
                node,
                &format!("http://{addr}/n/{node}"),
                &shared,
            )
            .await;
        }
        let inventories = tokio::spawn(republish(
            hv.clone(),
            format!("http://{addr}"),
            shared.clone(),
        ));
        let leases = tokio::spawn(renew_leases(
            Api::namespaced(client, AGENT_NAMESPACE),
            scope.id.clone(),
            nodes.clone(),
        ));
        Fleet {
            shared,
            nodes,
            scope_id: scope.id.clone(),
            tasks: vec![server, leases, inventories],
        }
    }

    /// Peaks of concurrent jobs so far.
    pub fn peaks(&self) -> Peaks {
        self.shared.0.lock().expect("fleet state").peaks.clone()
    }

    /// The target of every job started, in no order.
    pub fn job_targets(&self) -> Vec<String> {
        let st = self.shared.0.lock().expect("fleet state");
        st.jobs.values().map(|j| j.target.clone()).collect()
    }

    /// Which node runs guest `uuid`, if exactly one does.
    pub fn running_on(&self, uuid: &str) -> Vec<String> {
        let st = self.shared.0.lock().expect("fleet state");
        st.domains
            .iter()
            .filter(|(_, ds)| {
                ds.get(uuid)
                    .is_some_and(|d| d.state == DomainState::Running)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The uuid of guest `i` on node `n` at the start.
    pub fn uuid(&self, node: usize, i: usize) -> String {
        vm_uuid(node, i)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let cp = crate::control_plane();
        let out = cp.kubectl(
            &[
                "delete",
                "leases",
                "-n",
                AGENT_NAMESPACE,
                "-l",
                &format!("{SCOPE_LABEL}={}", self.scope_id),
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
        if !out.ok {
            eprintln!("deleting the fleet's leases: {}", out.stderr);
        }
    }
}

fn guest(name: String, uuid: String) -> DomainInfo {
    DomainInfo {
        name,
        uuid,
        state: DomainState::Running,
        memory_bytes: VM_MEMORY,
        vcpus: 1,
        persistent: true,
        disks: Vec::new(),
        dirty_rate: None,
    }
}

/// Creates node's Hypervisor and writes the status an agent would.
async fn publish(hv: &Api<Hypervisor>, scope: &Scope, node: &str, endpoint: &str, shared: &Shared) {
    let obj: Hypervisor = serde_json::from_value(json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "Hypervisor",
        "metadata": {"name": node, "labels": {SCOPE_LABEL: scope.id}},
        "spec": {},
    }))
    .expect("hypervisor");
    hv.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating Hypervisor {node}: {e}"));
    if let Err(e) = write_inventory(hv, node, endpoint, shared).await {
        panic!("writing Hypervisor {node} status: {e}");
    }
}

/// Writes node's Hypervisor status as an agent would: its guests as the
/// fleet holds them now.
async fn write_inventory(
    hv: &Api<Hypervisor>,
    node: &str,
    endpoint: &str,
    shared: &Shared,
) -> Result<(), kube::Error> {
    let domains: Vec<DomainInfo> = shared
        .0
        .lock()
        .expect("fleet state")
        .domains
        .get(node)
        .map(|d| d.values().cloned().collect())
        .unwrap_or_default();
    let status = json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "Hypervisor",
        "status": {
            "libvirtVersion": "11.3.0",
            "qemuVersion": "10.0.0",
            "cpu": {"arch": "x86_64", "model": "qemu64", "count": 64},
            "memory": {"totalBytes": 512u64 << 30, "freeBytes": 448u64 << 30},
            "migrationAddress": "127.0.0.1",
            "agentEndpoint": endpoint,
            "domains": domains,
            "lastSyncTime": jiff::Timestamp::now().to_string(),
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "LibvirtReachable",
                "message": "fake agent", "lastTransitionTime": jiff::Timestamp::now().to_string(),
            }],
        },
    });
    hv.patch_status(
        node,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .map(|_| ())
}

/// Every second, writes the inventories of the nodes whose guests moved,
/// as agents do after a migration (an evacuation completes on its node's
/// inventory).
async fn republish(hv: Api<Hypervisor>, endpoint: String, shared: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let changed = std::mem::take(&mut shared.0.lock().expect("fleet state").changed);
        for node in changed {
            let endpoint = format!("{endpoint}/n/{node}");
            if let Err(e) = write_inventory(&hv, &node, &endpoint, &shared).await {
                eprintln!("writing Hypervisor {node} status: {e}");
                shared.0.lock().expect("fleet state").changed.insert(node);
            }
        }
    }
}

/// Renews every node's heartbeat Lease every 10 s, as a real agent does.
async fn renew_leases(
    api: Api<k8s_openapi::api::coordination::v1::Lease>,
    scope: String,
    nodes: Vec<String>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        for node in &nodes {
            let name = format!("kvmotion-agent-{node}");
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": AGENT_NAMESPACE, "labels": {SCOPE_LABEL: scope}},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now},
            });
            if let Err(e) = api
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&lease),
                )
                .await
            {
                eprintln!("renewing {name}: {e}");
            }
        }
    }
}

fn router(shared: Shared) -> Router {
    let m = "/n/{node}/v1/migrations/{id}";
    Router::new()
        .route(m, get(status))
        .route(&format!("{m}/prepare"), post(prepare))
        .route(&format!("{m}/start"), post(start))
        .route(&format!("{m}/abort"), post(abort))
        .route(&format!("{m}/finish"), post(finish))
        .route(&format!("{m}/cleanup"), post(cleanup))
        .route("/n/{node}/v1/domains/{vm}", get(domain))
        .route_layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared)
}

fn refuse(code: StatusCode, reason: &str, message: String) -> Response {
    let body = ErrorBody {
        reason: reason.into(),
        message,
    };
    (code, axum::Json(body)).into_response()
}

/// Checks the caller's token as a real agent would (minus TokenReview)
/// before any call.
async fn authorize(State(shared): State<Shared>, req: Request, next: Next) -> Response {
    let want = format!("Bearer {}", shared.1.token);
    match req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some(got) if got.trim() == want => next.run(req).await,
        _ => refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a bearer token is required".into(),
        ),
    }
}

fn unknown_job(id: &str) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "UnknownMigration",
        format!("no job {id}"),
    )
}

/// Adds one to `key`'s count; returns the new count.
fn bump(counts: &mut HashMap<String, usize>, key: String) -> usize {
    let n = counts.entry(key).or_default();
    *n += 1;
    *n
}

/// Moves a job whose time is up to Completed and the guest to its target.
fn advance(st: &mut State_, id: &str, job_time: Duration) {
    let Some(job) = st.jobs.get_mut(id) else {
        return;
    };
    if job.phase != JobPhase::Running || job.started.elapsed() < job_time {
        return;
    }
    job.phase = JobPhase::Completed;
    let (source, target, vm) = (job.source.clone(), job.target.clone(), job.vm.clone());
    if let Some(d) = st.domains.get_mut(&source).and_then(|ds| ds.remove(&vm)) {
        st.domains.entry(target.clone()).or_default().insert(vm, d);
        st.changed.insert(source.clone());
        st.changed.insert(target.clone());
    }
    ended(st, &source, &target);
}

fn ended(st: &mut State_, source: &str, target: &str) {
    st.running = st.running.saturating_sub(1);
    if let Some(n) = st.running_out.get_mut(source) {
        *n = n.saturating_sub(1);
    }
    if let Some(n) = st.running_in.get_mut(target) {
        *n = n.saturating_sub(1);
    }
}

fn job_status(id: &str, job: &Job, job_time: Duration) -> JobStatus {
    let total = VM_MEMORY;
    let frac = (job.started.elapsed().as_secs_f64() / job_time.as_secs_f64()).min(1.0);
    let done = match job.phase {
        JobPhase::Completed => total,
        JobPhase::Starting | JobPhase::Running | JobPhase::Failed | JobPhase::Aborted => {
            (total as f64 * frac) as u64
        }
    };
    JobStatus {
        id: id.to_string(),
        phase: job.phase,
        progress: MigrationProgress {
            percent: (done * 100 / total) as u8,
            data_total_bytes: total,
            data_processed_bytes: done,
            data_remaining_bytes: total - done,
            memory_iteration: 1,
            throughput_bytes_per_second: (total as f64 / job_time.as_secs_f64()) as u64,
            ..Default::default()
        },
        result: (job.phase == JobPhase::Completed).then_some(MigrationResult {
            duration_ms: job_time.as_millis() as u64,
            downtime_ms: 10,
            data_transferred_bytes: total,
            post_copy_recoveries: 0,
        }),
        message: (job.phase == JobPhase::Aborted).then(|| "aborted on request".to_string()),
        reason: (job.phase == JobPhase::Aborted).then(|| "Requested".to_string()),
        vm_node: Some(match job.phase {
            JobPhase::Completed => job.target.clone(),
            JobPhase::Starting | JobPhase::Running | JobPhase::Failed | JobPhase::Aborted => {
                job.source.clone()
            }
        }),
        actions: Vec::new(),
        prediction: None,
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wait {
    wait_seconds: Option<u64>,
}

/// Reads a job, with a long poll until it ends or the wait is over.
async fn status(
    State(shared): State<Shared>,
    Path((_node, id)): Path<(String, String)>,
    Query(q): Query<Wait>,
) -> Response {
    let job_time = shared.1.job;
    let wait_until = Instant::now() + Duration::from_secs(q.wait_seconds.unwrap_or(0).min(30));
    loop {
        let sleep_until = {
            let mut st = shared.0.lock().expect("fleet state");
            advance(&mut st, &id, job_time);
            let Some(job) = st.jobs.get(&id) else {
                return unknown_job(&id);
            };
            let ends = job.started + job_time;
            if job.phase.is_final() || Instant::now() >= wait_until {
                return axum::Json(job_status(&id, job, job_time)).into_response();
            }
            ends.min(wait_until)
        };
        tokio::time::sleep_until(sleep_until.into()).await;
    }
}

async fn prepare(
    Path((node, id)): Path<(String, String)>,
    axum::Json(req): axum::Json<PrepareRequest>,
) -> Response {
    if req.source_node == node {
        return refuse(
            StatusCode::CONFLICT,
            "SameNode",
            format!("{id}: source is {node}"),
        );
    }
    axum::Json(PrepareResponse {
        libvirt_uri: format!("fake://{node}"),
        migration_uri: format!("tcp://{node}"),
        agent_endpoint: format!("fake://{node}"),
        created_disks: Vec::new(),
    })
    .into_response()
}

async fn start(
    State(shared): State<Shared>,
    Path((node, id)): Path<(String, String)>,
    axum::Json(req): axum::Json<StartRequest>,
) -> Response {
    let job_time = shared.1.job;
    let mut st = shared.0.lock().expect("fleet state");
    if let Some(job) = st.jobs.get(&id) {
        let s = job_status(&id, job, job_time);
        st.peaks.repeated_starts += 1;
        return axum::Json(s).into_response();
    }
    let Some(uuid) = st.domains.get(&node).and_then(|ds| {
        ds.values()
            .find(|d| {
                Some(&d.uuid) == req.vm.uuid.as_ref() || Some(&d.name) == req.vm.name.as_ref()
            })
            .map(|d| d.uuid.clone())
    }) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "DomainNotFound",
            format!("{} is not on {node}", req.vm),
        );
    };
    let job = Job {
        source: node.clone(),
        target: req.target_node.clone(),
        vm: uuid,
        started: Instant::now(),
        phase: JobPhase::Running,
    };
    let s = job_status(&id, &job, job_time);
    st.jobs.insert(id, job);
    st.running += 1;
    let out = bump(&mut st.running_out, node);
    let inb = bump(&mut st.running_in, req.target_node);
    let total = st.running;
    let p = &mut st.peaks;
    p.started += 1;
    p.total = p.total.max(total);
    p.outbound = p.outbound.max(out);
    p.inbound = p.inbound.max(inb);
    axum::Json(s).into_response()
}

async fn abort(
    State(shared): State<Shared>,
    Path((_node, id)): Path<(String, String)>,
) -> Response {
    let job_time = shared.1.job;
    let mut st = shared.0.lock().expect("fleet state");
    advance(&mut st, &id, job_time);
    let Some(job) = st.jobs.get_mut(&id) else {
        return unknown_job(&id);
    };
    if job.phase.is_final() {
        return refuse(
            StatusCode::CONFLICT,
            "JobFinished",
            format!("{id} has ended"),
        );
    }
    job.phase = JobPhase::Aborted;
    let (s, source, target) = (
        job_status(&id, job, job_time),
        job.source.clone(),
        job.target.clone(),
    );
    ended(&mut st, &source, &target);
    axum::Json(s).into_response()
}

/// Forgets a final job; answers with its last state.
async fn finish(
    State(shared): State<Shared>,
    Path((_node, id)): Path<(String, String)>,
) -> Response {
    let job_time = shared.1.job;
    let mut st = shared.0.lock().expect("fleet state");
    advance(&mut st, &id, job_time);
    match st.jobs.get(&id) {
        None => unknown_job(&id),
        Some(job) if !job.phase.is_final() => refuse(
            StatusCode::CONFLICT,
            "JobRunning",
            format!("{id} still runs"),
        ),
        Some(job) => {
            // Kept: a repeated finish answers the same.
            axum::Json(job_status(&id, job, job_time)).into_response()
        }
    }
}

/// Drops a preparation: nothing to free in a fake.
async fn cleanup() -> Response {
    axum::Json(json!({})).into_response()
}

async fn domain(
    State(shared): State<Shared>,
    Path((node, vm)): Path<(String, String)>,
) -> Response {
    let st = shared.0.lock().expect("fleet state");
    let domain = st
        .domains
        .get(&node)
        .and_then(|ds| ds.values().find(|d| d.uuid == vm || d.name == vm).cloned());
    // Fake jobs are keyed by migration id and always known: none runs unrecorded.
    axum::Json(DomainPresence {
        node,
        domain,
        migrating: false,
    })
    .into_response()
}
