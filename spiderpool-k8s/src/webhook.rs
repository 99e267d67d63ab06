//! The validating admission webhook of pools and reserved IPs, served by the controller: the
//! API server asks before it stores, and the answer is the engine's own verdict
//! ([`spiderpool_core::admission`]), so that an object the allocator would refuse is never
//! stored, and the user reads the same message either way.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use spiderpool_core::admission::{admit_pool, admit_pool_deletion, admit_reserved_ip};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::crd::SpiderIPPool;

/// The path the API server posts reviews to.
pub const PATH: &str = "/validate";

/// The verdict on one admission request, given every pool stored now (`existing`) and the
/// blocks of the pool it is about (`blocks`).
///
/// Pools: creation and update are checked as the engine reads pools (every violation, overlap
/// with other pools; on update `subnet` and `ipVersion` immutable, addresses in use kept);
/// deletion is refused while the pool holds addresses. Reserved IPs: checked on creation and
/// update. Anything else is allowed.
pub fn review(
    request: &AdmissionRequest<DynamicObject>,
    existing: &[spiderpool_core::SpiderIPPool],
    blocks: &[spiderpool_core::Block],
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let verdict = match (request.kind.kind.as_str(), &request.operation) {
        ("SpiderIPPool", Operation::Create | Operation::Update) => {
            match (
                wire(request.object.as_ref()),
                wire(request.old_object.as_ref()).ok(),
            ) {
                (Ok(new), old) => admit_pool(existing, old.as_ref(), &new, blocks).map_err(|e| e.to_string()),
                (Err(error), _) => Err(error),
            }
        }
        ("SpiderIPPool", Operation::Delete) => wire(request.old_object.as_ref())
            .and_then(|old| admit_pool_deletion(&old, blocks).map_err(|e| e.to_string())),
        ("SpiderReservedIP", Operation::Create | Operation::Update) => wire(request.object.as_ref())
            .and_then(|object| admit_reserved_ip(&object).map_err(|e| e.to_string())),
        _ => Ok(()),
    };
    match verdict {
        Ok(()) => response,
        Err(reason) => response.deny(reason),
    }
}

/// An object of the review as the engine's wire type.
fn wire<T: serde::de::DeserializeOwned>(object: Option<&DynamicObject>) -> Result<T, String> {
    let object = object.ok_or("the review carries no object")?;
    let value = serde_json::to_value(object).map_err(|err| err.to_string())?;
    serde_json::from_value(value).map_err(|err| format!("the object cannot be read: {err}"))
}

/// The webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The certificate or key file cannot be used.
    #[error("{path}: {problem}; give a PEM certificate chain and its PEM private key")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The address cannot be listened on.
    #[error("cannot listen on {address}: {source}; free the port or listen on another address")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
}

/// The port the webhook listens on unless told otherwise (the Service's `targetPort`).
pub const DEFAULT_PORT: u16 = 9443;

/// Binds the webhook's listener: on `address` when given, otherwise on port [`DEFAULT_PORT`]
/// of every address of the host ([`bind_every_address`]). Call it inside a Tokio runtime.
pub fn bind(address: Option<SocketAddr>) -> Result<TcpListener, WebhookError> {
    match address {
        Some(address) => bind_socket(address, None),
        None => bind_every_address(DEFAULT_PORT),
    }
}

/// Binds `port` on every IPv6 and IPv4 address of the host with one socket: `[::]` with
/// `IPV6_V6ONLY` off, whatever `net.ipv6.bindv6only` says, so the API server reaches the
/// webhook in IPv4, IPv6 and dual-stack clusters alike. On a host without IPv6 (the socket
/// cannot be made or bound to `[::]`), `0.0.0.0`. Port 0 picks a free port.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let listener = spiderpool_k8s::webhook::bind_every_address(0).unwrap();
/// let port = listener.local_addr().unwrap().port();
/// tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
/// # });
/// ```
pub fn bind_every_address(port: u16) -> Result<TcpListener, WebhookError> {
    let any_v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    match bind_socket(any_v6, Some(false)) {
        // A port taken or forbidden is so for IPv4 too; anything else means no IPv6 here.
        Err(WebhookError::Listen { source, .. })
            if !matches!(source.kind(), ErrorKind::AddrInUse | ErrorKind::PermissionDenied) =>
        {
            bind_socket(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)), None)
        }
        bound => bound,
    }
}

/// A listening socket on `address`, with `SO_REUSEADDR` (a restarted controller rebinds while
/// old connections linger) and, for IPv6, `IPV6_V6ONLY` as given.
fn bind_socket(address: SocketAddr, only_v6: Option<bool>) -> Result<TcpListener, WebhookError> {
    use socket2::{Domain, Socket, Type};
    let listen = |source| WebhookError::Listen { address, source };
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(listen)?;
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6).map_err(listen)?;
    }
    socket.set_reuse_address(true).map_err(listen)?;
    socket.set_nonblocking(true).map_err(listen)?;
    socket.bind(&address.into()).map_err(listen)?;
    socket.listen(1024).map_err(listen)?;
    TcpListener::from_std(socket.into()).map_err(listen)
}

/// Serves the webhook over TLS on `listener` ([`bind`]) until the process ends, with the PEM
/// files `cert` (chain) and `key`.
pub async fn serve_on(
    listener: TcpListener,
    cert: &Path,
    key: &Path,
    client: Client,
) -> Result<(), WebhookError> {
    let bad = |path: &Path, problem: String| WebhookError::Certificate {
        path: path.display().to_string(),
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|err| bad(cert, err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| bad(cert, err.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|err| bad(key, err.to_string()))?;
    serve_with(listener, chain, key_der, client).await
}

/// Serves the webhook on `listener` with a certificate chain and its key.
pub async fn serve_with(
    listener: TcpListener,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client: Client,
) -> Result<(), WebhookError> {
    let unusable = |problem: String| WebhookError::Certificate {
        path: "the serving certificate".into(),
        problem,
    };
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| unusable(err.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|err| unusable(err.to_string()))?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| answer(request, client.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// A certificate authority made at start, and a serving certificate it signed: what the
/// controller serves the webhook with when the cluster has no certificate for it.
pub struct SelfSigned {
    /// The CA certificate, PEM: the registration's `caBundle`.
    pub ca_pem: String,
    /// The serving certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its private key, DER.
    pub key: PrivateKeyDer<'static>,
}

/// Makes a CA and a serving certificate for `names` (DNS names, or IP addresses).
pub fn self_signed(names: &[String]) -> Result<SelfSigned, WebhookError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let failed = |err: rcgen::Error| WebhookError::Certificate {
        path: "a self-signed certificate".into(),
        problem: err.to_string(),
    };
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "spiderpool webhook CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    let key = KeyPair::generate().map_err(failed)?;
    let mut serving = CertificateParams::new(names.to_vec()).map_err(failed)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = serving
        .signed_by(&key, &Issuer::new(ca, ca_key))
        .map_err(failed)?;
    Ok(SelfSigned {
        ca_pem: ca_cert.pem(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    })
}

/// Where the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookTarget {
    /// The controller's Service (port 443, path [`PATH`]).
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A URL (a controller outside the cluster, or a test).
    Url(String),
}

impl WebhookTarget {
    /// The names the serving certificate must carry.
    pub fn certificate_names(&self) -> Vec<String> {
        match self {
            WebhookTarget::Service { namespace, name } => vec![
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ],
            WebhookTarget::Url(url) => {
                let host = url
                    .trim_start_matches("https://")
                    .split(['/', ':'])
                    .next()
                    .unwrap_or_default();
                vec![host.to_owned()]
            }
        }
    }
}

/// Creates or updates the `ValidatingWebhookConfiguration` `name` (server-side apply): pools
/// (create, update, delete) and reserved IPs (create, update) go to `target`, trusted through
/// `ca_pem`; a failing webhook fails the request. `object_selector` (JSON) limits it to some
/// objects, as tests do.
pub async fn register(
    client: &Client,
    name: &str,
    target: &WebhookTarget,
    ca_pem: &str,
    object_selector: Option<serde_json::Value>,
) -> Result<(), kube::Error> {
    let client_config = match target {
        WebhookTarget::Service { namespace, name } => serde_json::json!({
            "service": {"namespace": namespace, "name": name, "path": PATH, "port": 443}
        }),
        WebhookTarget::Url(url) => serde_json::json!({"url": url}),
    };
    let mut webhook = serde_json::json!({
        "name": "spiderippools.spiderpool.spidernet.io",
        "clientConfig": client_config,
        "rules": [
            {"apiGroups": ["spiderpool.spidernet.io"], "apiVersions": ["v2beta1"],
             "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["spiderippools"]},
            {"apiGroups": ["spiderpool.spidernet.io"], "apiVersions": ["v2beta1"],
             "operations": ["CREATE", "UPDATE"], "resources": ["spiderreservedips"]}
        ],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10
    });
    if let Some(selector) = object_selector {
        webhook["objectSelector"] = selector;
    }
    let configuration = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook]
    });
    let mut configuration: ValidatingWebhookConfiguration =
        serde_json::from_value(configuration).expect("a valid webhook configuration");
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()));
    }
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        name,
        &PatchParams::apply("spiderpool-controller").force(),
        &Patch::Apply(&configuration),
    )
    .await?;
    Ok(())
}

/// Answers one HTTP request.
async fn answer(request: Request<Incoming>, client: Client) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if request.method() != Method::POST || request.uri().path() != PATH {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"POST AdmissionReviews to /validate\n",
        )));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    let body = request.into_body().collect().await?.to_bytes();
    let response = match serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body)
        .map_err(|err| err.to_string())
        .and_then(|review| {
            review
                .try_into()
                .map_err(|err: kube::core::admission::ConvertAdmissionReviewError| err.to_string())
        }) {
        Ok(admission) => {
            let admission: AdmissionRequest<DynamicObject> = admission;
            let blocks = async {
                match admission.kind.kind.as_str() {
                    "SpiderIPPool" => pool_blocks(&client, &admission.name).await,
                    _ => Ok(Vec::new()),
                }
            };
            match tokio::join!(existing_pools(&client), blocks) {
                (Ok(pools), Ok(blocks)) => review(&admission, &pools, &blocks),
                // Without the other pools the verdict cannot be given; failurePolicy decides.
                (Err(error), _) => AdmissionResponse::from(&admission).deny(format!(
                    "the webhook could not list SpiderIPPools to check overlaps: {error}; try again"
                )),
                (_, Err(error)) => AdmissionResponse::from(&admission).deny(format!(
                    "the webhook could not read the SpiderIPBlocks of pool {}: {error}; try again",
                    admission.name
                )),
            }
        }
        Err(error) => AdmissionResponse::invalid(error),
    };
    let json = serde_json::to_vec(&response.into_review()).expect("reviews serialize");
    let mut answer = Response::new(Full::new(Bytes::from(json)));
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("a header value"),
    );
    Ok(answer)
}

/// The blocks of `pool`, as the engine reads them.
async fn pool_blocks(client: &Client, pool: &str) -> Result<Vec<spiderpool_core::Block>, String> {
    let params = ListParams::default().fields(&format!("spec.pool={pool}"));
    let blocks = Api::<crate::crd::SpiderIPBlock>::all(client.clone())
        .list(&params)
        .await
        .map_err(|err| err.to_string())?;
    blocks
        .items
        .iter()
        .map(|block| block.to_core().map_err(|err| err.to_string()))
        .collect()
}

/// Every pool stored now, as the engine reads them.
async fn existing_pools(client: &Client) -> Result<Vec<spiderpool_core::SpiderIPPool>, kube::Error> {
    let pools = Api::<SpiderIPPool>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(pools.items.iter().map(SpiderIPPool::to_core).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn every_address_means_ipv4_and_ipv6_on_one_port() {
        let listener = bind_every_address(0).unwrap();
        let bound = listener.local_addr().unwrap();
        let port = bound.port();
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.unwrap();
        // Only a host without IPv6 falls back to IPv4 alone.
        if bound.is_ipv6() {
            TcpStream::connect((Ipv6Addr::LOCALHOST, port)).await.unwrap();
        } else {
            assert!(std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err());
        }
    }

    #[tokio::test]
    async fn a_given_address_is_the_only_one_listened_on() {
        let listener = bind(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))).unwrap();
        let bound = listener.local_addr().unwrap();
        assert_eq!(bound.ip(), Ipv4Addr::LOCALHOST);
        TcpStream::connect(bound).await.unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_the_address() {
        let taken = bind_every_address(0).unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = bind_every_address(port).unwrap_err();
        let WebhookError::Listen { address, source } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(address.port(), port);
        assert_eq!(source.kind(), ErrorKind::AddrInUse);
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot listen on {address}: ")),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .ends_with("free the port or listen on another address"),
            "{error}"
        );
    }
}
