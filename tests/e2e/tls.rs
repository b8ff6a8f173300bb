//! https destinations: the built-in roots by default, and a connection's own CA certificates
//! for a private PKI or a self-signed receiver.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::support::{data_dir, eventually, Server};

/// An https receiver on 127.0.0.1 whose certificate a fresh CA signed; answers 200.
struct TlsReceiver {
    url: String,
    ca_pem: String,
    requests: Arc<AtomicUsize>,
}

impl TlsReceiver {
    async fn start() -> TlsReceiver {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    // A failed handshake (an untrusting client) just ends the connection.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                    let _ = tls.write_all(answer).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsReceiver {
            url,
            ca_pem: ca.pem(),
            requests,
        }
    }
}

#[tokio::test]
async fn a_connection_trusts_its_own_ca_and_only_that_connection_does() {
    let receiver = TlsReceiver::start().await;
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, &[]).await;
    let module = server.upload("forward", wasmhooks::examples::FORWARD).await;

    let (status, body) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "bad", "base_url": receiver.url, "ca_certificate": "not a certificate"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("ca_certificate: holds no `-----BEGIN CERTIFICATE-----` block"),
        "{body}"
    );

    let (status, trusting) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "private pki", "base_url": receiver.url,
                    "ca_certificate": receiver.ca_pem}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{trusting}");
    assert_eq!(trusting["ca_certificate"], receiver.ca_pem.as_str());
    let (status, plain) = server
        .post_json(
            "/v1/connections",
            &json!({"name": "built-in roots", "base_url": receiver.url}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{plain}");
    for (name, connection) in [("trusting", &trusting), ("plain", &plain)] {
        server
            .create_webhook(
                json!({"name": name, "event_kinds": ["a"], "module_id": module,
                                   "connection_id": connection["id"], "url": "/in",
                                   "retry_schedule": []}),
            )
            .await;
    }
    let ack = server.emit(json!({"kind": "a", "payload": {"n": 1}})).await;
    let mut statuses = Vec::new();
    for id in ack["deliveries"].as_array().unwrap() {
        let delivery = server.final_delivery(id.as_str().unwrap()).await;
        statuses.push((
            delivery["status"].as_str().unwrap().to_string(),
            delivery["attempts"][0]["error"].clone(),
        ));
    }
    // Creation order: trusting first.
    assert_eq!(statuses[0].0, "delivered", "{statuses:?}");
    assert_eq!(statuses[1].0, "dead", "{statuses:?}");
    let error = statuses[1].1.as_str().unwrap();
    assert!(
        error.starts_with("connection failed") && error.contains("certificate"),
        "{error}"
    );
    eventually("the trusted request", || async {
        (receiver.requests.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
}
