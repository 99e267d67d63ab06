//! The validating admission webhook of pools and reserved IPs, served by the controller: the
//! API server asks before it stores, and the answer is the engine's own verdict
//! ([`spiderpool_core::admission`]), so that an object the allocator would refuse is never
//! stored, and the user reads the same message either way.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::api::ListParams;
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

/// The verdict on one admission request, given every pool stored now (`existing`).
///
/// Pools: creation and update are checked as the engine reads pools (every violation, overlap
/// with other pools; on update `subnet` and `ipVersion` immutable, addresses in use kept);
/// deletion is refused while the pool holds addresses. Reserved IPs: checked on creation and
/// update. Anything else is allowed.
pub fn review(
    request: &AdmissionRequest<DynamicObject>,
    existing: &[spiderpool_core::SpiderIPPool],
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let verdict = match (request.kind.kind.as_str(), &request.operation) {
        ("SpiderIPPool", Operation::Create | Operation::Update) => {
            match (
                wire(request.object.as_ref()),
                wire(request.old_object.as_ref()).ok(),
            ) {
                (Ok(new), old) => admit_pool(existing, old.as_ref(), &new).map_err(|e| e.to_string()),
                (Err(error), _) => Err(error),
            }
        }
        ("SpiderIPPool", Operation::Delete) => wire(request.old_object.as_ref())
            .and_then(|old| admit_pool_deletion(&old).map_err(|e| e.to_string())),
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
    #[error("listening on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
}

/// Serves the webhook over TLS on `address` until the process ends.
pub async fn serve(address: SocketAddr, cert: &Path, key: &Path, client: Client) -> Result<(), WebhookError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| WebhookError::Listen { address, source })?;
    serve_on(listener, cert, key, client).await
}

/// Serves the webhook on a listener already bound (tests bind port 0).
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
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| bad(cert, err.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|err| bad(cert, err.to_string()))?;
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
            match existing_pools(&client).await {
                Ok(pools) => review(&admission, &pools),
                // Without the other pools the verdict cannot be given; failurePolicy decides.
                Err(error) => AdmissionResponse::from(&admission).deny(format!(
                    "the webhook could not list SpiderIPPools to check overlaps: {error}; try again"
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

/// Every pool stored now, as the engine reads them.
async fn existing_pools(client: &Client) -> Result<Vec<spiderpool_core::SpiderIPPool>, kube::Error> {
    let pools = Api::<SpiderIPPool>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(crate::cluster::documents(&pools.items, &[])
        .into_iter()
        .filter_map(|document| match document.resource {
            spiderpool_core::Resource::IpPool(pool) => Some(*pool),
            _ => None,
        })
        .collect())
}
