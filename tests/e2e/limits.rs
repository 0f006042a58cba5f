//! Guests that trap, spin, hoard memory or recurse forever cost only themselves:
//! each fails with a clear status while a healthy neighbour tenant is served
//! without a single error.

use std::time::Duration;

use reqwest::StatusCode;

use crate::harness::{neighbour_unharmed, TestNode};

/// Two tenants: `bad.test` runs the misbehaving fixture, `good.test` hello.
async fn neighbours(node: &TestNode) -> String {
    node.tenant_with("good", "hello", "hello", "good.test").await;
    node.tenant_with("bad", "misbehave", "misbehave", "bad.test").await
}

/// Sixteen clients asking `good.test` for hello in a loop until `stop` is
/// set, counting the answers in `served`: light load that saturates the node.
fn light_load(
    node: &TestNode,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    (0..16)
        .map(|_| {
            let (http, addr, stop, served) = (node.http.clone(), node.ingress(), stop.clone(), served.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let resp = http.get(format!("http://{addr}/")).header("host", "good.test").send().await;
                    if resp.is_ok_and(|r| r.status() == StatusCode::OK) {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

/// Run `paths` on the bad tenant (all at once) while the good one is hit in a
/// loop; assert each bad request gets `expected` with a body mentioning
/// `message`, and the neighbour never fails.
async fn contained(node: &TestNode, paths: &[&str], expected: StatusCode, message: &str) {
    let bad = paths.iter().map(|path| node.get("bad.test", path));
    let answers = neighbour_unharmed(node, "good.test", 5, futures::future::join_all(bad)).await;
    for (path, (status, body)) in paths.iter().zip(answers) {
        assert_eq!(status, expected, "GET {path}: {body}");
        assert!(body.contains(message), "GET {path}: body {body:?} should mention {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_guest_gets_500_and_its_neighbour_is_unaffected() {
    let node = TestNode::start().await;
    let bad = neighbours(&node).await;
    contained(&node, &["/trap", "/trap"], StatusCode::INTERNAL_SERVER_ERROR, "failed while handling").await;
    assert_eq!(node.get("bad.test", "/ok").await.0, StatusCode::OK, "the failing instance itself still serves");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage = node.usage(&bad).await;
    assert_eq!((usage["requests"].as_u64(), usage["errors"].as_u64()), (Some(3), Some(2)), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guest_runs_out_of_fuel_with_503_while_its_neighbour_is_served() {
    let node = TestNode::start().await;
    let bad = neighbours(&node).await;
    // Two spinning guests at once on a two-core machine: neither may starve the neighbour.
    contained(&node, &["/loop", "/loop"], StatusCode::SERVICE_UNAVAILABLE, "compute budget").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage = node.usage(&bad).await;
    assert!(usage["fuel"].as_u64().unwrap() >= 2 * 400_000_000 - 1_000, "the whole budget is billed: {usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_past_its_deadline_gets_504_while_its_neighbour_is_served() {
    let node = TestNode::start_with(|config| {
        config.limits.fuel_per_request = u64::MAX / 4;
        config.limits.request_timeout = Duration::from_millis(1500);
    })
    .await;
    neighbours(&node).await;
    // Spinning in guest code (interrupted by epochs) and blocked in a host call
    // (stopped by the host's timer).
    contained(&node, &["/loop", "/sleep?ms=20000"], StatusCode::GATEWAY_TIMEOUT, "did not answer in time").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_allocating_without_bound_hits_its_memory_cap() {
    let node = TestNode::start().await;
    neighbours(&node).await;
    contained(&node, &["/alloc", "/alloc"], StatusCode::INTERNAL_SERVER_ERROR, "memory limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_recursing_without_bound_overflows_its_stack_with_500() {
    let node = TestNode::start().await;
    neighbours(&node).await;
    contained(&node, &["/recurse", "/recurse"], StatusCode::INTERNAL_SERVER_ERROR, "failed while handling").await;
}

/// The examples' stack is 128 KiB and sits below the data: a frame that fits
/// answers, one larger than the stack runs off its bottom and traps — a 500,
/// never a write into the guest's data that would answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_the_stack_traps_with_500() {
    let node = TestNode::start().await;
    neighbours(&node).await;
    assert_eq!(node.get("bad.test", "/frame/64").await, (StatusCode::OK, "7\n".to_string()));
    contained(&node, &["/frame/256", "/frame/256"], StatusCode::INTERNAL_SERVER_ERROR, "failed while handling").await;
    assert_eq!(node.get("bad.test", "/frame/64").await.0, StatusCode::OK, "the instance still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_capacity_answers_503_and_recovers() {
    let node = TestNode::start_with(|config| {
        config.pool.max_instances = 2;
        config.edges.max_guests_per_tenant = Some(2);
    })
    .await;
    neighbours(&node).await;
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let (http, addr) = (node.http.clone(), node.ingress());
            tokio::spawn(async move {
                http.get(format!("http://{addr}/sleep?ms=1500"))
                    .header("host", "bad.test")
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = node.get("good.test", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("at capacity"), "{body}");
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(node.get("good.test", "/").await.0, StatusCode::OK, "slots are reused once free");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage = node.get_admin("/v1/usage?tenant=good").await;
    assert_eq!(usage["usage"][0]["requests"], 1, "a request refused for capacity is not the tenant's usage: {usage}");
}

/// Light load that saturates the node does not starve heavy work: guests
/// allocating to their memory cap and spinning to their fuel limit, once they
/// proved heavy, start under `SCHED_IDLE`, are seen starved there and move on
/// to lowered threads, which keep a bounded share of the cores, and still end
/// with their own outcome, not the deadline: here in 0.8–0.9 s of their 3 s
/// (under `SCHED_IDLE` alone, 0.4 % of a core, they ran into it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_guests_keep_a_share_of_a_node_saturated_by_light_requests() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let node = TestNode::start_with(|config| config.limits.request_timeout = Duration::from_secs(3)).await;
    neighbours(&node).await;
    let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let load = light_load(&node, &stop, &served);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let heavy = ["/alloc", "/loop", "/alloc", "/loop"];
    let answers = futures::future::join_all(heavy.iter().map(|path| node.get("bad.test", path))).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    for (path, (status, body)) in heavy.iter().zip(answers) {
        let (expected, message) = match *path {
            "/alloc" => (StatusCode::INTERNAL_SERVER_ERROR, "memory limit"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "compute budget"),
        };
        assert_eq!(status, expected, "GET {path} after {took:?}: {body}");
        assert!(body.contains(message), "GET {path} after {took:?}: {body}");
    }
    assert!(served.load(Ordering::Relaxed) > 100, "the light load kept being served meanwhile");
    let metrics = node.metrics().await;
    let moved = crate::harness::sample(&metrics, "wharf_guests_heavy_total").unwrap_or(0.0);
    let rescued = crate::harness::sample(&metrics, "wharf_guests_heavy_rescued_total").unwrap_or(-1.0);
    assert!(moved >= 1.0 && (0.0..=moved).contains(&rescued), "heavy {moved}, rescued {rescued}");
    eprintln!("{took:?}: {moved} heavy guest runs, {rescued} moved on from starved idle-priority threads");
}

/// A SQL statement that turns heavy cannot move to other threads as a guest
/// does: its database thread goes to idle priority, and when the node becomes
/// saturated while it runs, it is seen starved there with the heavy guests'
/// idle threads and raised to the lowered threads' bounded share, so the
/// statement ends with its answer, not its time limit (at idle priority alone,
/// 0.3 % of a core beside normal work, it would run into it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_statements_keep_a_share_when_the_node_becomes_saturated() {
    if crate::harness::on_postgres() {
        return; // instance SQL runs in PostgreSQL's processes, not on this node's database threads
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let node = TestNode::start_with(|config| config.limits.request_timeout = Duration::from_secs(3)).await;
    neighbours(&node).await;
    let rows = "200000";
    let count = format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) SELECT count(*) FROM c"
    );
    let query = || node.ingress_call("bad.test", reqwest::Method::POST, "/sql/query", None, &count);
    let started = std::time::Instant::now();
    let (status, _, body) = query().await;
    let alone = started.elapsed();
    assert!(status == StatusCode::OK && body.contains(rows), "{status} {body}");

    // The same statement again (its instance was heavy a moment ago: it starts
    // at idle priority), and as it starts, light requests and two cores' worth
    // of other work at normal priority saturate the machine, the other work
    // until the statement is raised (or for most of its time limit).
    let raised = || async {
        crate::harness::sample(&node.metrics().await, "wharf_statements_heavy_rescued_total").unwrap_or(0.0) >= 1.0
    };
    let started = std::time::Instant::now();
    let (answer, load) = tokio::join!(query(), async {
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let clients = light_load(&node, &stop, &served);
        let ease = Arc::new(AtomicBool::new(false));
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let ease = ease.clone();
                std::thread::spawn(move || {
                    while !ease.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let saturated = std::time::Instant::now();
        while saturated.elapsed() < Duration::from_millis(1900) && !raised().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ease.store(true, Ordering::Relaxed);
        for thread in busy {
            thread.join().unwrap();
        }
        (stop, served, clients)
    });
    let took = started.elapsed();
    let (stop, served, clients) = load;
    stop.store(true, Ordering::Relaxed);
    for task in clients {
        task.await.unwrap();
    }
    let (status, _, body) = answer;
    assert!(
        status == StatusCode::OK && body.contains(rows),
        "the statement took {alone:?} alone, {took:?} as the node became saturated: {status} {body}"
    );
    assert!(served.load(Ordering::Relaxed) > 10, "the light load was served meanwhile");
    let metrics = node.metrics().await;
    let heavy = crate::harness::sample(&metrics, "wharf_statements_heavy_total").unwrap_or(0.0);
    let rescued = crate::harness::sample(&metrics, "wharf_statements_heavy_rescued_total").unwrap_or(-1.0);
    eprintln!(
        "the statement took {alone:?} alone, {took:?} saturated: {heavy} heavy, {rescued} raised from idle priority"
    );
    // Raised, or lowered from the start where the idle threads were already
    // starved (other tests' load) or the process may not raise a thread: at
    // idle priority all along, it would have run into its time limit.
    assert!(heavy >= 2.0 && (0.0..=heavy).contains(&rescued), "heavy {heavy}, rescued {rescued}");
}

/// A flood of light requests (each fails fast: the guest recurses into its
/// stack limit) from one tenant, spread over two of its instances so that
/// neither takes most of the node alone: no single request is heavy, yet the
/// tenant takes the node's cores. Alone on the node it may (nobody waits behind
/// it); once another tenant has requests too, the tenant is marked for its
/// share and its requests continue on the heavy-guest threads, each still with
/// its own outcome, while the neighbour's are served without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_light_requests_beside_another_continues_on_the_heavy_threads() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let node = TestNode::start().await;
    neighbours(&node).await;
    node.create_instance("bad", "misbehave", &["bad2.test"]).await;
    let marks = |metrics: &str| crate::harness::sample(metrics, "wharf_instances_flooding_total").unwrap_or(-1.0);
    let (stop, failed, other) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood: Vec<_> = (0..12)
        .map(|client| {
            let host = if client % 2 == 0 { "bad.test" } else { "bad2.test" };
            let (http, addr, stop, failed, other) =
                (node.http.clone(), node.ingress(), stop.clone(), failed.clone(), other.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let resp = http.get(format!("http://{addr}/recurse")).header("host", host).send().await;
                    match resp.map(|r| r.status()) {
                        Ok(StatusCode::INTERNAL_SERVER_ERROR) => failed.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alone = marks(&node.metrics().await);
    assert_eq!(alone, 0.0, "an instance alone on the node is never marked for its share");

    // The neighbour's requests, one at a time, while the flood goes on.
    let started = std::time::Instant::now();
    let mut served = 0;
    let mut marked = 0.0;
    while started.elapsed() < Duration::from_secs(20) {
        let (status, body) = node.get("good.test", "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        served += 1;
        if served % 20 == 0 {
            marked = marks(&node.metrics().await);
            if marked >= 1.0 && started.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    let metrics = node.metrics().await;
    let heavy = crate::harness::sample(&metrics, "wharf_guests_heavy_total").unwrap_or(0.0);
    eprintln!(
        "{marked} marks after {:?}, {served} neighbour requests, {} flood requests failed as they should, {heavy} heavy runs",
        started.elapsed(),
        failed.load(Ordering::Relaxed)
    );
    assert!(marked >= 1.0, "the flooding instance was never marked beside its neighbour");
    assert!(heavy >= 1.0, "its requests never went to the heavy threads");
    assert_eq!(other.load(Ordering::Relaxed), 0, "every flood request got its own outcome (500)");
}

/// A flood of SQL statements, each too short to be heavy (a couple of
/// milliseconds, under the 5 ms that lowers one), runs on the database threads
/// where no guest time is seen: their CPU counts in the tenant's share all the
/// same, so beside another tenant the flooding one is marked, and its next
/// statements start lowered, each still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_short_statements_beside_another_has_them_lowered() {
    if crate::harness::on_postgres() {
        return; // instance SQL runs in PostgreSQL's processes, not on this node's database threads
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let node = TestNode::start().await;
    neighbours(&node).await;
    let count =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) SELECT count(*) FROM c";
    let sample = |metrics: &str, name: &str| crate::harness::sample(metrics, name).unwrap_or(-1.0);
    let started = std::time::Instant::now();
    let (status, _, body) = node.ingress_call("bad.test", reqwest::Method::POST, "/sql/query", None, count).await;
    assert!(status == StatusCode::OK && body.contains("10000"), "{status} {body}");
    let metrics = node.metrics().await;
    assert_eq!(
        sample(&metrics, "wharf_statements_heavy_total"),
        0.0,
        "one statement is light ({:?})",
        started.elapsed()
    );

    let (stop, answered, other) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (http, addr, stop, answered, other) =
                (node.http.clone(), node.ingress(), stop.clone(), answered.clone(), other.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let resp = http
                        .post(format!("http://{addr}/sql/query"))
                        .header("host", "bad.test")
                        .body(count)
                        .send()
                        .await;
                    match resp {
                        Ok(resp) if resp.status() == StatusCode::OK => answered.fetch_add(1, Ordering::Relaxed),
                        Ok(resp) => {
                            // Waiting its turn too long is the one other answer it may get.
                            let body = resp.text().await.unwrap_or_default();
                            assert!(body.contains("busy"), "{body}");
                            other.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("{e}"),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = node.metrics().await;
    assert_eq!(sample(&metrics, "wharf_instances_flooding_total"), 0.0, "alone on the node it is never marked");
    assert_eq!(sample(&metrics, "wharf_statements_heavy_total"), 0.0, "nor is any of its statements heavy");

    // The neighbour's requests, one at a time, while the flood goes on.
    let started = std::time::Instant::now();
    let (mut served, mut marked, mut lowered) = (0, 0.0, 0.0);
    while started.elapsed() < Duration::from_secs(20) {
        let (status, body) = node.get("good.test", "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        served += 1;
        if served % 20 == 0 {
            let metrics = node.metrics().await;
            (marked, lowered) =
                (sample(&metrics, "wharf_instances_flooding_total"), sample(&metrics, "wharf_statements_heavy_total"));
            if marked >= 1.0 && lowered >= 1.0 {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    eprintln!(
        "{marked} marks, {lowered} statements lowered after {:?}, {served} neighbour requests, {} statements answered, {} busy",
        started.elapsed(),
        answered.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    assert!(marked >= 1.0, "the flooding tenant was never marked beside its neighbour");
    assert!(lowered >= 1.0, "its statements never started lowered");
    assert!(answered.load(Ordering::Relaxed) > 100, "the flood's statements kept being answered");
}
