//! Admin API handlers for identity and access: registration, login, keys,
//! members, grants, service permissions and the audit log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::extract::{ApiPath, ApiQuery, Object};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::Json;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{client_ip, Authed, MaybeAuthed};
use super::AdminState;
use super::{body, ApiError};
use crate::access::{AccessError, Platform, Role};
use crate::identity::credentials::bearer;
use crate::identity::IdentityError;

type ApiResult<T> = Result<T, ApiError>;

fn to_json(value: impl serde::Serialize) -> ApiResult<Json<Value>> {
    Ok(Json(serde_json::to_value(value).map_err(anyhow::Error::from)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailPassword {
    email: String,
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    email: String,
    password: String,
    /// The token of an invitation to this address.
    #[serde(default)]
    invitation: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "identity",
    operation_id = "register",
    summary = "Create an account (with an invitation unless registration is open)",
    request_body = Registration,
    responses(
        (status = 201, description = "The account, with a session token", body = super::openapi::Registered, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
    security(()),
)]
pub async fn register(
    State(node): State<Arc<AdminState>>,
    MaybeAuthed(caller): MaybeAuthed,
    payload: Result<Json<Object<Registration>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Registration { email, password, invitation } = body(payload)?;
    let by_operator = caller.as_ref().is_some_and(|c| c.operator);
    let (user, accepted) = node.identity.register(&email, &password, invitation.as_deref(), by_operator).await?;
    let actor = caller.as_ref().map(|c| c.email.as_str()).unwrap_or(&user.email);
    node.audit.record(actor, "user.register", &user.id, None, "ok").await;
    let mut out = serde_json::to_value(&user).map_err(anyhow::Error::from)?;
    if let Some(invitation) = accepted {
        join(&node, &invitation, &user.id, &user.email).await?;
        out["joined"] = json!({ "tenant": invitation.tenant, "role": invitation.role });
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// Make the user of an accepted invitation a member.
async fn join(
    node: &AdminState,
    invitation: &crate::identity::invitations::Invitation,
    user_id: &str,
    email: &str,
) -> ApiResult<()> {
    let role = Role::parse(&invitation.role).unwrap_or(Role::Member);
    node.access.set_member(&invitation.tenant, user_id, role).await?;
    node.audit
        .record(email, "invitation.accept", &format!("{email} as {}", role.as_str()), Some(&invitation.tenant), "ok")
        .await;
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationToken {
    token: String,
}

/// Accept an invitation with the account of its address.
#[utoipa::path(
    post,
    path = "/v1/invitations/accept",
    tag = "members",
    operation_id = "accept_invitation",
    summary = "Accept an invitation with the logged-in account of its address",
    request_body = InvitationToken,
    responses(
        (status = 200, description = "The membership", body = super::openapi::Accepted, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn accept_invitation(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<InvitationToken>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let InvitationToken { token } = body(payload)?;
    let invitation = node.identity.accept(&token, &caller).await?;
    join(&node, &invitation, &caller.user_id, &caller.email).await?;
    Ok(Json(json!({ "tenant": invitation.tenant, "role": invitation.role, "email": caller.email })))
}

/// What an invitation link shows: who is invited where, and how to accept.
#[utoipa::path(
    get,
    path = "/v1/invitations/{token}",
    tag = "members",
    operation_id = "show_invitation",
    summary = "What an invitation link shows: who is invited where",
    params(
        ("token" = String, Path, description = "The invitation's token"),
    ),
    responses(
        (status = 200, description = "The invitation", body = super::openapi::InvitationView, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
    security(()),
)]
pub async fn show_invitation(
    State(node): State<Arc<AdminState>>,
    ApiPath(token): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let invitation = node.identity.invitations.open(&token).await?;
    Ok(Json(json!({
        "tenant": invitation.tenant,
        "email": invitation.email,
        "role": invitation.role,
        "invited_by": invitation.invited_by,
        "expires_at": invitation.expires_at,
        "accept": {
            "new_account": format!("wharf register {} --invitation {token}", invitation.email),
            "existing_account": format!("wharf accept {token}"),
            "api": "POST /v1/users {\"email\", \"password\", \"invitation\"} or, signed in, POST /v1/invitations/accept {\"token\"}",
        },
    })))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/invitations",
    tag = "members",
    operation_id = "list_invitations",
    summary = "A tenant's pending invitations",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The invitations", body = super::openapi::InvitationList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list_invitations(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require(&caller, &tenant, Platform::MembersManage).await?;
    Ok(Json(json!({ "invitations": node.identity.invitations.list(&tenant).await? })))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{id}/invitations/{invitation}",
    tag = "members",
    operation_id = "cancel_invitation",
    summary = "Cancel an invitation",
    params(
        ("id" = String, Path, description = "Its id"),
        ("invitation" = String, Path, description = "The invitation's id"),
    ),
    responses(
        (status = 204, description = "Cancelled"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn cancel_invitation(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    node.access.require(&caller, &tenant, Platform::MembersManage).await?;
    if !node.identity.invitations.cancel(&tenant, &id).await? {
        return Err(ApiError::not_found(format!("no open invitation {id:?} in {tenant:?}")));
    }
    node.audit.record(&caller.email, "invitation.cancel", &id, Some(&tenant), "ok").await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/login",
    tag = "identity",
    operation_id = "login",
    summary = "Open a session with an email and a password",
    request_body = EmailPassword,
    responses(
        (status = 200, description = "The session token and when it expires", body = crate::identity::NewSession, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
    security(()),
)]
pub async fn login(
    State(node): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    payload: Result<Json<Object<EmailPassword>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let EmailPassword { email, password } = body(payload)?;
    let client = client_ip(peer.ip(), &headers, &node.config.trust.trusted_proxies);
    match node.identity.login(&email, &password, client).await {
        Ok(session) => {
            node.audit.record(&session.user.email, "login", &session.user.id, None, "ok").await;
            to_json(session)
        }
        Err(e) => {
            // A checked failure is audited; refused attempts (rate limited,
            // invalid, busy) are only counted, so a flood cannot grow the log.
            if matches!(e, IdentityError::BadCredentials) {
                let email: String = email.trim().chars().take(254).collect();
                node.audit.record(&email, "login", &client.to_string(), None, "wrong email or password").await;
            }
            Err(e.into())
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/logout",
    tag = "identity",
    operation_id = "logout",
    summary = "End the session the request carries",
    responses(
        (status = 204, description = "The session has ended"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn logout(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    if caller.credential != "session" {
        return Err(ApiError::bad_request("logout ends sessions; revoke an API key with DELETE /v1/keys/{id}"));
    }
    if let Some(token) = bearer(&headers) {
        node.identity.logout(token).await?;
    }
    node.audit.record(&caller.email, "logout", &caller.user_id, None, "ok").await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "identity",
    operation_id = "me",
    summary = "Who the credential belongs to, their tenants and roles",
    responses(
        (status = 200, description = "The caller", body = super::openapi::Me, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn me(State(node): State<Arc<AdminState>>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
    // The caller's own memberships (an operator sees every tenant through
    // GET /v1/tenants, page by page).
    let mut tenants = Vec::new();
    for member in node.access.memberships(&caller.user_id).await? {
        tenants.push(json!({ "tenant": member.tenant, "role": member.role }));
    }
    // Whether other tenants may add this account at once (see invitations).
    let proven = node.identity.user_by_email(&caller.email).await?.email_verified;
    Ok(Json(json!({
        "user_id": caller.user_id,
        "email": caller.email,
        "email_verified": proven,
        "operator": caller.operator,
        "credential": caller.credential,
        "tenants": tenants,
        "quotas": node.configurator.user_quotas(&caller.user_id).await?,
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    name: String,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "identity",
    operation_id = "create_key",
    summary = "Create an API key: the secret is shown only in this answer",
    request_body = NewKeyRequest,
    responses(
        (status = 201, description = "The key and its secret", body = crate::identity::NewKey, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn create_key(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<NewKeyRequest>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request = body(payload)?;
    let expires = match request.expires_in_days {
        Some(0) => return Err(ApiError::bad_request("expires_in_days must be at least 1 (or omitted for no expiry)")),
        Some(days) => Some(Duration::from_secs(u64::from(days) * 86_400)),
        None => None,
    };
    let key = node.identity.create_key(&caller.user_id, &request.name, expires).await?;
    node.audit.record(&caller.email, "key.create", &key.info.prefix, None, "ok").await;
    Ok((StatusCode::CREATED, to_json(key)?))
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "identity",
    operation_id = "list_keys",
    summary = "The caller's API keys (never the secrets)",
    responses(
        (status = 200, description = "The keys", body = super::openapi::KeyList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list_keys(State(node): State<Arc<AdminState>>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "keys": node.identity.keys(&caller.user_id).await? })))
}

#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "identity",
    operation_id = "revoke_key",
    summary = "Revoke one of the caller's keys (by id or prefix)",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The key is revoked", body = crate::identity::KeyInfo, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn revoke_key(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let key = node.identity.revoke_key(&caller.user_id, &id).await?;
    node.audit.record(&caller.email, "key.revoke", &key.prefix, None, "ok").await;
    to_json(key)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/members",
    tag = "members",
    operation_id = "list_members",
    summary = "A tenant's members and their roles",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The members", body = super::openapi::MemberList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list_members(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require(&caller, &tenant, Platform::TenantRead).await?;
    Ok(Json(json!({ "members": node.access.members(&tenant).await? })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    email: String,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    email: String,
}

/// Make a member an owner, and the owner handing over an admin (operators
/// hand over for nobody), in one change.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/transfer",
    tag = "members",
    operation_id = "transfer",
    summary = "Hand a tenant over: the member becomes owner, the owner handing over an admin",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = Transfer,
    responses(
        (status = 200, description = "The new roles", body = super::openapi::Transferred, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn transfer(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
    payload: Result<Json<Object<Transfer>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    node.access.require(&caller, &tenant, Platform::MembersManage).await?;
    require_owner_for(&node, &caller, &tenant).await?;
    let request = body(payload)?;
    let user = node.identity.user_by_email(&request.email).await?;
    let from = (!caller.operator).then_some(caller.user_id.as_str());
    node.access.transfer(&tenant, from, &user.id, &user.email).await?;
    node.audit
        .record(&caller.email, "member.transfer", &format!("ownership to {}", user.email), Some(&tenant), "ok")
        .await;
    Ok(Json(json!({ "tenant": tenant, "members": node.access.members(&tenant).await? })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    password: String,
}

/// Delete one's own account, confirmed by its password.
#[utoipa::path(
    delete,
    path = "/v1/me",
    tag = "identity",
    operation_id = "delete_me",
    summary = "Delete one's own account, confirmed by its password (refused while the last owner of a tenant)",
    request_body = Confirmation,
    responses(
        (status = 200, description = "The account is deleted", body = super::openapi::UserDeleted, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn delete_me(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    payload: Result<Json<Object<Confirmation>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let request = body(payload)
        .map_err(|e| ApiError::bad_request(format!("{}; send {{\"password\": \"...\"}} to confirm", e.message)))?;
    node.identity.confirm_password(&caller, &request.password).await?;
    node.access.delete_account(&caller.user_id).await?;
    node.audit.record(&caller.email, "account.delete", &caller.email, None, "ok").await;
    Ok(Json(json!({ "deleted": caller.email })))
}

/// Delete someone's account (operators).
#[utoipa::path(
    delete,
    path = "/v1/users/{email}",
    tag = "identity",
    operation_id = "delete_user",
    summary = "Delete someone's account (operators)",
    params(
        ("email" = String, Path, description = "An account's email address"),
    ),
    responses(
        (status = 200, description = "The account is deleted", body = super::openapi::UserDeleted, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn delete_user(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(email): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require_operator(&caller, Platform::MembersManage)?;
    let user = node.identity.user_by_email(&email).await.map_err(|e| match e {
        IdentityError::UnknownUser(email) => ApiError::not_found(format!("no user with email {email:?}")),
        other => other.into(),
    })?;
    node.access.delete_account(&user.id).await?;
    node.audit.record(&caller.email, "account.delete", &user.email, None, "ok").await;
    Ok(Json(json!({ "deleted": user.email })))
}

/// Only owners (and operators) may make or unmake owners.
async fn require_owner_for(node: &AdminState, caller: &crate::identity::Caller, tenant: &str) -> ApiResult<()> {
    if caller.operator || node.access.role(tenant, &caller.user_id).await? == Some(Role::Owner) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, format!("only owners of {tenant:?} may add or remove owners")))
    }
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/members",
    tag = "members",
    operation_id = "add_member",
    summary = "Add a member; an address without a proven account is invited",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = NewMember,
    responses(
        (status = 201, description = "The member", body = super::openapi::MemberAdded, content_type = "application/json"),
        (status = 202, description = "An invitation was made (and mailed, or its link returned)", body = super::openapi::Invited, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn add_member(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
    payload: Result<Json<Object<NewMember>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    node.access.require(&caller, &tenant, Platform::MembersManage).await?;
    let request = body(payload)?;
    let role_name = request.role.unwrap_or_else(|| "member".into());
    let role = Role::parse(&role_name).ok_or(AccessError::InvalidRole(role_name))?;
    let email = crate::identity::normalize_email(&request.email)?;
    let user = match node.identity.user_by_email(&email).await {
        Ok(user) => Some(user),
        Err(IdentityError::UnknownUser(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let has_account = user.is_some();
    let current = match &user {
        Some(user) => node.access.role(&tenant, &user.id).await?,
        None => None,
    };
    if role == Role::Owner || current == Some(Role::Owner) {
        require_owner_for(&node, &caller, &tenant).await?;
    }
    // A proven address (or a change of an existing member's role) takes effect
    // now; anyone else is invited, so that the role goes to whoever controls the
    // address, not to whoever registered it first.
    if let Some(user) = user.filter(|u| u.email_verified || current.is_some()) {
        node.access.set_member(&tenant, &user.id, role).await?;
        node.audit
            .record(&caller.email, "member.add", &format!("{} as {}", user.email, role.as_str()), Some(&tenant), "ok")
            .await;
        return Ok((
            StatusCode::CREATED,
            Json(json!({ "tenant": tenant, "email": user.email, "user_id": user.id, "role": role })),
        ));
    }
    if node.config.trust.registration == crate::config::Registration::Closed && !has_account {
        return Err(ApiError::bad_request(format!(
            "{email} has no account and registration is closed; an operator must create the account first"
        )));
    }
    let mailed = node.mailer.is_some();
    let (invitation, token) =
        node.identity.invitations.create(&tenant, &email, role.as_str(), &caller.email, mailed).await?;
    let link = format!("{}/v1/invitations/{token}", public_url(&node));
    let delivered = match &node.mailer {
        Some(mailer) => {
            if let Err(e) = mailer.send(&invitation, &link, &token).await {
                let _ = node.identity.invitations.cancel(&tenant, &invitation.id).await;
                tracing::warn!(%tenant, "invitation email failed: {e:#}");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "the invitation email could not be sent (see the node's log); nothing was kept, retry later",
                ));
            }
            crate::identity::invitations::NewInvitation { invitation, delivery: "email", token: None, link: None }
        }
        None => {
            tracing::info!(%tenant, email = %email, %link, "invitation created; no SMTP is configured, so give this link to the invitee");
            crate::identity::invitations::NewInvitation {
                invitation,
                delivery: "link",
                token: Some(token),
                link: Some(link),
            }
        }
    };
    node.audit
        .record(&caller.email, "member.invite", &format!("{email} as {}", role.as_str()), Some(&tenant), "ok")
        .await;
    Ok((StatusCode::ACCEPTED, Json(json!({ "invitation": delivered }))))
}

/// The admin API's base URL as invitees reach it.
fn public_url(node: &AdminState) -> String {
    match &node.config.trust.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{}", node.addresses.admin),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{id}/members/{email}",
    tag = "members",
    operation_id = "remove_member",
    summary = "Remove a member",
    params(
        ("id" = String, Path, description = "Its id"),
        ("email" = String, Path, description = "An account's email address"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn remove_member(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((tenant, email)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    node.access.require(&caller, &tenant, Platform::MembersManage).await?;
    let user = node.identity.user_by_email(&email).await?;
    if node.access.role(&tenant, &user.id).await? == Some(Role::Owner) {
        require_owner_for(&node, &caller, &tenant).await?;
    }
    node.access.remove_member(&tenant, &user.id, &user.email).await?;
    node.audit.record(&caller.email, "member.remove", &user.email, Some(&tenant), "ok").await;
    Ok(StatusCode::NO_CONTENT)
}

/// Split `service.permission` and check that the service's active version declares it.
fn declared(node: &AdminState, permission: &str) -> ApiResult<(String, String)> {
    let (service, name) = permission.split_once('.').ok_or_else(|| {
        ApiError::bad_request(format!(
            "{permission:?} is not a service permission; write it as service.permission, e.g. forum.addUsers"
        ))
    })?;
    let slot =
        node.registry.slot(service).ok_or_else(|| ApiError::bad_request(format!("no service named {service:?}")))?;
    let active =
        slot.active().ok_or_else(|| ApiError::bad_request(format!("service {service:?} has no active version")))?;
    if !active.declares(name) {
        let known: Vec<String> = active.manifest.permissions.iter().map(|p| format!("{service}.{}", p.name)).collect();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        return Err(ApiError::bad_request(format!(
            "{service} {} does not declare the permission {name:?}; it declares: {known}",
            active.version
        )));
    }
    Ok((service.to_string(), name.to_string()))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/grants",
    tag = "members",
    operation_id = "list_grants",
    summary = "Service permissions granted in a tenant",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    responses(
        (status = 200, description = "The grants", body = super::openapi::GrantList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list_grants(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    node.access.require(&caller, &tenant, Platform::TenantRead).await?;
    let grants: Vec<Value> = node
        .access
        .grants(&tenant)
        .await?
        .into_iter()
        .map(|grant| {
            // A grant applies only while the service's active version declares it.
            let status = match grant.permission.split_once('.') {
                Some((service, name)) => match node.registry.slot(service).and_then(|s| s.active()) {
                    Some(active) if active.declares(name) => "active".to_string(),
                    Some(active) => format!("inactive: {service} {} does not declare {name}", active.version),
                    None => format!("inactive: service {service} has no active version"),
                },
                None => "inactive: not a service permission".to_string(),
            };
            let mut value = serde_json::to_value(&grant).unwrap_or_default();
            value["status"] = Value::String(status);
            value
        })
        .collect();
    Ok(Json(json!({ "grants": grants })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    email: String,
    permission: String,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/grants",
    tag = "members",
    operation_id = "add_grant",
    summary = "Grant a member a service permission",
    params(
        ("id" = String, Path, description = "Its id"),
    ),
    request_body = NewGrant,
    responses(
        (status = 201, description = "The grant", body = super::openapi::GrantAdded, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn add_grant(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath(tenant): ApiPath<String>,
    payload: Result<Json<Object<NewGrant>>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    node.access.require(&caller, &tenant, Platform::MembersManage).await?;
    let request = body(payload)?;
    declared(&node, &request.permission)?;
    let user = node.identity.user_by_email(&request.email).await?;
    node.access.grant(&tenant, &user.id, &user.email, &request.permission).await?;
    node.audit
        .record(&caller.email, "grant.add", &format!("{} to {}", request.permission, user.email), Some(&tenant), "ok")
        .await;
    Ok((StatusCode::CREATED, Json(json!({ "tenant": tenant, "email": user.email, "permission": request.permission }))))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{id}/grants/{email}/{permission}",
    tag = "members",
    operation_id = "remove_grant",
    summary = "Revoke a service permission",
    params(
        ("id" = String, Path, description = "Its id"),
        ("email" = String, Path, description = "An account's email address"),
        ("permission" = String, Path, description = "The permission (service.name)"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn remove_grant(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiPath((tenant, email, permission)): ApiPath<(String, String, String)>,
) -> ApiResult<StatusCode> {
    node.access.require(&caller, &tenant, Platform::MembersManage).await?;
    let user = node.identity.user_by_email(&email).await?;
    if !node.access.revoke(&tenant, &user.id, &permission).await? {
        return Err(ApiError::not_found(format!("{} holds no grant {permission:?} in {tenant:?}", user.email)));
    }
    node.audit
        .record(&caller.email, "grant.remove", &format!("{permission} from {}", user.email), Some(&tenant), "ok")
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct VersionFilter {
    version: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}/permissions",
    tag = "services",
    operation_id = "service_permissions",
    summary = "The permissions a service version declares",
    params(
        ("name" = String, Path, description = "The service's name"),
        ("version" = Option<String>, Query, description = "A version (default: the active one)"),
    ),
    responses(
        (status = 200, description = "The permissions", body = super::openapi::PermissionList, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn service_permissions(
    State(node): State<Arc<AdminState>>,
    Authed(_caller): Authed,
    ApiPath(name): ApiPath<String>,
    ApiQuery(filter): ApiQuery<VersionFilter>,
) -> ApiResult<Json<Value>> {
    let slot = node
        .registry
        .slot(&name)
        .ok_or_else(|| ApiError::from(crate::registry::RegistryError::UnknownService(name.clone())))?;
    let version = match &filter.version {
        Some(v) => {
            slot.version(v).ok_or_else(|| ApiError::not_found(format!("service {name:?} has no version {v:?}")))?
        }
        None => slot.active().ok_or_else(|| ApiError::not_found(format!("service {name:?} has no active version")))?,
    };
    let permissions: Vec<Value> = version
        .manifest
        .permissions
        .iter()
        .map(|p| json!({ "permission": format!("{name}.{}", p.name), "name": p.name, "description": p.description, "routes": p.routes }))
        .collect();
    Ok(Json(json!({ "service": name, "version": version.version, "permissions": permissions })))
}

#[derive(Deserialize)]
pub struct AuditFilter {
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "node",
    operation_id = "audit",
    summary = "The audit log, newest first (operators see all; others their tenants)",
    params(
        ("limit" = Option<i64>, Query, description = "How many entries (default 100)"),
    ),
    responses(
        (status = 200, description = "The entries", body = super::openapi::AuditLog, content_type = "application/json"),
        (status = "default", description = "An error: the message says what is wrong and how to fix it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn audit(
    State(node): State<Arc<AdminState>>,
    Authed(caller): Authed,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> ApiResult<Json<Value>> {
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    let entries = match node.access.visible_tenants(&caller).await? {
        None => node.audit.list(None, limit).await?,
        Some(tenants) => {
            let mut readable = Vec::new();
            for tenant in tenants {
                if node.access.require(&caller, &tenant, Platform::AuditRead).await.is_ok() {
                    readable.push(tenant);
                }
            }
            node.audit.list(Some((&readable, &caller.email)), limit).await?
        }
    };
    Ok(Json(json!({ "entries": entries })))
}
