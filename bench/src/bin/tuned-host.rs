//! The minimal tuned host: what a careful engineer writes in an afternoon to
//! serve one wasi:http component fast — wasmtime's pooling allocator with
//! copy-on-write memory images, one `ProxyPre`, a fresh store and instance per
//! request, hyper keep-alive connections. No fuel, no epochs, no routing, no
//! accounting: the floor Wharf's request path is measured against.

use std::sync::Arc;

use clap::Parser;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

#[derive(Parser)]
struct Args {
    /// The component to serve.
    component: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8091")]
    addr: std::net::SocketAddr,
}

struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: wasmtime_wasi_http::default_hooks() }
    }
}

async fn handle(
    pre: Arc<ProxyPre<Host>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
    let host = Host { table: ResourceTable::new(), wasi: WasiCtx::builder().build(), http: WasiHttpCtx::new() };
    let mut store = Store::new(pre.engine(), host);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, req).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let out = store.data_mut().http().new_response_outparam(sender).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => anyhow::bail!("guest error {code:?}"),
        Err(_) => anyhow::bail!("guest gave no response: {:?}", task.await),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(PoolingAllocationConfig::default()));
    config.memory_init_cow(true);
    let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let component = Component::from_file(&engine, &args.component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let pre = linker.instantiate_pre(&component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let pre = Arc::new(ProxyPre::new(pre).map_err(|e| anyhow::anyhow!("{e:#}"))?);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    eprintln!("tuned host on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pre = pre.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(pre.clone(), req));
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
