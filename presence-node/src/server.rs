//! Starting and stopping a node: data folder, store, listeners, tick driver, `ready.json`,
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::datadir::{self, Ready};
use crate::node::{Node, now_ms};
use crate::service::Service;
use crate::topology::Topology;
use crate::{admin, cluster, longpoll, quic, webhook, ws};

/// Raises the open-files soft limit to the hard limit (each WebSocket is a descriptor).
fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(limit = n, "open files limit raised to the hard limit"),
        Err(e) => warn!("could not raise the open files limit: {e}"),
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn serve(mut cfg: NodeConfig) -> anyhow::Result<()> {
    raise_nofile();
    datadir::ensure(&cfg.data_dir)?;
    cfg.node_id = Some(datadir::node_id(&cfg.data_dir, cfg.node_id.as_deref())?);
    let (secret, new_secret) =
        datadir::secret_value(&cfg.data_dir, "secret", cfg.secret.as_deref())?;
    let (admin_key, new_key) =
        datadir::secret_value(&cfg.data_dir, "admin_key", cfg.admin_key.as_deref())?;
    let (certs, key, cert_path) = datadir::tls_identity(
        &cfg.data_dir,
        cfg.tls_cert.as_deref(),
        cfg.tls_key.as_deref(),
    )?;

    let metrics = crate::metrics::install()?;
    let secret = secret.into_bytes();
    // With a webhook URL: the queue's sender goes to the node (its delivery thread hands the
    // service's undelivered events over), its receiver and the URL to the task started below.
    let (webhook_tx, webhook_job) = match cfg.webhook_url.as_deref() {
        Some(url) => {
            let uri = webhook::parse_url(url)?;
            let (tx, rx) = tokio::sync::mpsc::channel(webhook::QUEUE);
            (Some(tx), Some((uri, rx)))
        }
        None => (None, None),
    };
    // In a cluster, chat is in the cluster's PostgreSQL, which every node writes; the
    // blocking client connects off the runtime's threads.
    let shared_chat = match (cfg.is_cluster(), cfg.store.clone()) {
        (true, Some(url)) => {
            let name = cfg.node_id.clone().unwrap_or_default();
            let opened = tokio::task::spawn_blocking(move || {
                let store = presence_pg::PgChatStore::connect(&url)?;
                let number = store.node_number(&name)?;
                Ok::<_, chat_relay::StoreError>((store, number))
            })
            .await
            .context("opening the cluster's chat store")?
            .context("opening the cluster's chat store")?;
            info!(node_number = opened.1, "chat in the cluster's PostgreSQL");
            let store: Arc<dyn chat_relay::ChatStore> = Arc::new(opened.0);
            Some((store, opened.1))
        }
        _ => None,
    };
    let node = Arc::new(Node::new(
        Service::open(
            cfg.clone(),
            secret.clone(),
            admin_key,
            shared_chat,
            now_ms(),
        )?,
        webhook_tx,
    ));
    let committer = node
        .spawn_committer()
        .context("starting the chat commit thread")?;
    if let Some(max_age) = cfg.chat_retention {
        node.spawn_retention(max_age);
    }
    let webhook_task = webhook_job.map(|(uri, rx)| {
        tokio::spawn(webhook::run(
            uri,
            secret.clone().into(),
            rx,
            node.shutdown().clone(),
        ))
    });

    let ws_listener = TcpListener::bind(cfg.ws_listen)
        .await
        .with_context(|| format!("binding WebSocket on {}", cfg.ws_listen))?;
    let admin_listener = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding admin on {}", cfg.admin_listen))?;
    let endpoint = quic::endpoint(cfg.quic_listen, certs, key, cfg.heartbeat_timeout)?;
    let mut ready = Ready {
        ws: ws_listener.local_addr()?,
        quic: endpoint.local_addr()?,
        admin: admin_listener.local_addr()?,
        pid: std::process::id(),
        node: cfg.node_id.clone().unwrap_or_default(),
        peer: None,
    };
    let advertise = |flag: &Option<String>, addr: std::net::SocketAddr| {
        flag.clone().unwrap_or_else(|| addr.to_string())
    };
    let mut me = presence_cluster::Member {
        id: ready.node.clone(),
        ws: advertise(&cfg.advertise_ws, ready.ws),
        quic: advertise(&cfg.advertise_quic, ready.quic),
        // The long-poll endpoints share the WebSocket port.
        lp: cfg
            .advertise_lp
            .clone()
            .unwrap_or_else(|| format!("http://{}", advertise(&cfg.advertise_ws, ready.ws))),
        admin: ready.admin.to_string(),
        peer: String::new(),
        peer_cert: String::new(),
        draining: false,
    };
    // Cluster mode: the peer link, the shared store, then the join (which returns once the
    // slot map is known: ready.json is written after it).
    let cluster = match (&cfg.cluster_etcd, &cfg.store) {
        (Some(_), Some(url)) => {
            let (peer_endpoint, identity) = cluster::peer_endpoint(&cfg)?;
            let peer_addr = peer_endpoint.local_addr()?;
            ready.peer = Some(peer_addr);
            me.peer = advertise(&cfg.advertise_peer, peer_addr);
            me.peer_cert = identity.pem().to_owned();
            let store = presence_pg::Store::connect(url)
                .await
                .context("connecting to the PostgreSQL store")?
                .with_max_friends(cfg.max_friends);
            info!("PostgreSQL store open");
            Some(
                cluster::Cluster::join(
                    &cfg,
                    &node,
                    Arc::new(store),
                    me.clone(),
                    peer_endpoint,
                    &secret,
                )
                .await?,
            )
        }
        _ => None,
    };
    let topology = Arc::new(match &cluster {
        Some(c) => Topology::Cluster {
            me: me.clone(),
            map: c.map(),
        },
        None => Topology::Single(me.clone()),
    });

    // TCP_NODELAY: two small frames in a row to an idle client (an inbox entry after a
    // `sent`, two presence frames) would otherwise wait out the client's 40 ms delayed ACK.
    let ws_listener = ws_listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            warn!("could not set TCP_NODELAY on a WebSocket connection: {e}");
        }
    });
    let mut client_routes = ws::router(node.clone()).merge(longpoll::router(node.clone())?);
    if let Some(demo) = crate::demo::router(node.clone()) {
        client_routes = client_routes.merge(demo);
    }
    let ws_task = tokio::spawn(
        axum::serve(ws_listener, client_routes)
            .with_graceful_shutdown(node.shutdown().clone().cancelled_owned())
            .into_future(),
    );
    let admin_task = tokio::spawn(
        axum::serve(
            admin_listener,
            admin::router(node.clone(), topology, metrics),
        )
        .with_graceful_shutdown(node.shutdown().clone().cancelled_owned())
        .into_future(),
    );
    let quic_task = tokio::spawn(quic::serve(endpoint.clone(), node.clone()));
    let ticker = node.spawn_ticker().context("starting the tick thread")?;

    datadir::write_ready(&cfg.data_dir, &ready)?;
    println!("presence-node ready (pid {})", ready.pid);
    println!("  websocket  ws://{}/v1/ws", ready.ws);
    println!("  long-poll  http://{}/v1/lp/open", ready.ws);
    println!(
        "  quic       {} (ALPN presence/1, certificate {})",
        ready.quic,
        cert_path.display()
    );
    println!("  admin      http://{}", ready.admin);
    if cfg.demo_dir.is_some() {
        println!(
            "  demo       http://{}/demo/ (development only: it mints tokens for anyone)",
            ready.ws
        );
    }
    println!("  data       {}", cfg.data_dir.display());
    if new_secret || new_key {
        println!("  generated a token secret and an admin key into the data folder");
    }
    let key_file = cfg.data_dir.join("admin_key");
    println!("try:");
    println!(
        "  curl -X PUT -H \"Authorization: Bearer $(cat {})\" http://{}/v1/users/alice/friends -d '{{\"friends\":[\"bob\"]}}'",
        key_file.display(),
        ready.admin
    );
    println!(
        "  cargo run --release -p presence-node -- token --user alice --data-dir {}",
        cfg.data_dir.display()
    );

    wait_for_signal().await;
    if let Some(c) = &cluster {
        // Hand the slots over first: their sessions are told `moved` as each slot goes, and
        // reconnect to the new owners within the grace period, so no friend sees a flap.
        info!("shutting down: handing slots over");
        // Statuses set here go to the store before the slots do: their next owners load them.
        if let Some(h) = node.cluster_hooks()
            && let Err(e) = crate::cluster::statuses::flush(&node, &h.store).await
        {
            warn!("writing the last statuses before the handover failed: {e}");
        }
        c.hand_over(&me.id, cfg.lease_ttl * 2 + Duration::from_secs(10))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while node.service().session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    info!("shutting down: closing sessions");
    node.service().close_all();
    node.shutdown().cancel();
    endpoint.close(0u32.into(), b"node shutting down");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.service().session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop_ticker();
    let _ = tokio::task::spawn_blocking(move || ticker.join()).await;
    node.service().chat().stop();
    let _ = tokio::task::spawn_blocking(move || committer.join()).await;
    if let Some(task) = webhook_task {
        task.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    for task in [ws_task, admin_task] {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    quic_task.abort();
    if let Some(c) = cluster {
        c.leave().await;
    }
    datadir::remove_ready(&cfg.data_dir);
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
