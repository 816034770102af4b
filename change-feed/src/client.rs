//! The Cosmos DB client of the change feed, from the config file: key or Entra ID auth, HTTP/1.1 and text JSON
//! (what every gateway and the loopback emulator speak), certificate validation always on except for an emulator on
//! loopback.

use crate::config::{Auth, ChangeFeedFile};
use crate::entra::ClientSecretCredential;
use crate::reader::ChangeFeedError;
use azure_core::credentials::Secret;
use azure_data_cosmos::options::{BinaryEncodingOptions, ConnectionPoolOptions, ServerCertificateValidation};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, CosmosRuntime, RoutingStrategy,
};
use std::sync::Arc;

fn env_secret(var: &str) -> Result<String, ChangeFeedError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(ChangeFeedError::Setup(format!("the environment variable {var} (the Cosmos DB secret) is not set"))),
    }
}

pub async fn connect(file: &ChangeFeedFile) -> Result<CosmosClient, ChangeFeedError> {
    producer::install_tls_provider();
    let endpoint: AccountEndpoint =
        file.endpoint.parse().map_err(|e| ChangeFeedError::Setup(format!("endpoint: {e}")))?;
    let account = match &file.auth {
        Auth::Key { key_env } => {
            AccountReference::with_authentication_key(endpoint, Secret::from(env_secret(key_env)?))
        }
        Auth::EntraId { tenant_id, client_id, client_secret_env, authority } => {
            let secret = env_secret(client_secret_env)?;
            let cred = ClientSecretCredential::new(authority, tenant_id, client_id, secret)
                .map_err(|e| ChangeFeedError::Setup(format!("entra id: {e}")))?;
            AccountReference::with_credential(endpoint, Arc::new(cred))
        }
    };
    let pool = ConnectionPoolOptions::builder()
        .with_is_http2_allowed(false)
        .with_server_certificate_validation(ServerCertificateValidation::RequiredUnlessEmulator)
        .build()
        .map_err(|e| ChangeFeedError::Client(e.to_string()))?;
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(pool)
        .build()
        .await
        .map_err(|e| ChangeFeedError::Client(e.to_string()))?;
    CosmosClientBuilder::new()
        .with_runtime(runtime)
        .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
        .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
        .await
        .map_err(|e| ChangeFeedError::Client(e.to_string()))
}
