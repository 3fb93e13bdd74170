"""Identity with the official SDKs, only the endpoint changed: the IAM SDK
(huaweicloudsdkiam) gets a token from `ecsd --dev` with the dev user's
password and temporary AK/SK with that token; the ECS SDK then lists servers
with the token (sdk-wire.md "Token auth") and with the temporary AK/SK
(`BasicCredentials(...).with_security_token(...)`)."""

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkecs.v2 import EcsClient, ListServersDetailsRequest
from huaweicloudsdkiam.v3 import (
    AuthScope,
    AuthScopeProject,
    CreateTemporaryAccessKeyByTokenRequest,
    CreateTemporaryAccessKeyByTokenRequestBody,
    IamClient,
    IdentityToken,
    KeystoneCreateUserTokenByPasswordRequest,
    KeystoneCreateUserTokenByPasswordRequestBody,
    PwdAuth,
    PwdIdentity,
    PwdPassword,
    PwdPasswordUser,
    PwdPasswordUserDomain,
    TokenAuth,
    TokenAuthIdentity,
)

# The IAM SDK needs credentials to build a client; these are never checked by
# the token operations (they authenticate with the password or the token).
DUMMY_AK, DUMMY_SK = "DUMMYAKDUMMYAKDUMMY0", "dummy-secret-key"


def http_config(ecsd):
    config = HttpConfig.get_default_config()
    config.ssl_ca_cert = ecsd.ca_file
    return config


def iam_client(ecsd, handler=None):
    b = (IamClient.new_builder()
         .with_credentials(GlobalCredentials(DUMMY_AK, DUMMY_SK, "dummy-domain-id"))
         .with_http_config(http_config(ecsd))
         .with_endpoints([ecsd.endpoint]))
    if handler is not None:
        b = b.with_http_handler(handler)
    return b.build()


def password_login(ecsd, password=None):
    creds = ecsd.creds
    body = KeystoneCreateUserTokenByPasswordRequestBody(auth=PwdAuth(
        identity=PwdIdentity(methods=["password"], password=PwdPassword(user=PwdPasswordUser(
            domain=PwdPasswordUserDomain(name=creds["domain"]), name=creds["user"],
            password=password or creds["password"]))),
        scope=AuthScope(project=AuthScopeProject(id=ecsd.project_id))))
    return iam_client(ecsd).keystone_create_user_token_by_password(
        KeystoneCreateUserTokenByPasswordRequest(body=body))


def drop_authorization(request, **_):
    request.header_params.pop("Authorization", None)


def ecs_with_token(ecsd, token):
    """The ECS SDK sending X-Auth-Token and no signature (sdk-wire.md)."""
    client = (EcsClient.new_builder()
              .with_credentials(BasicCredentials(DUMMY_AK, DUMMY_SK, ecsd.project_id))
              .with_http_config(http_config(ecsd))
              .with_http_handler(HttpHandler().add_request_handler(drop_authorization))
              .with_endpoints([ecsd.endpoint]).build())
    client.preset_headers = {"X-Auth-Token": token, "Authorization": "placeholder"}
    return client


def test_iam_sdk_gets_a_token_and_the_ecs_sdk_lists_servers_with_it(ecsd):
    resp = password_login(ecsd)
    assert resp.status_code == 201
    token = resp.x_subject_token
    assert token
    assert resp.token.user.name == ecsd.creds["user"] == "dev-admin"
    assert resp.token.user.domain.name == ecsd.creds["domain"]
    assert resp.token.project.id == ecsd.project_id
    assert resp.token.methods == ["password"]
    assert resp.token.expires_at.endswith("Z")

    servers = ecs_with_token(ecsd, token).list_servers_details(ListServersDetailsRequest())
    assert servers.count == len(ecsd.creds["servers"])
    assert {s.id for s in servers.servers} == {s["id"] for s in ecsd.creds["servers"]}


def test_a_wrong_password_is_refused_by_iam(ecsd):
    with pytest.raises(ClientRequestException) as e:
        password_login(ecsd, password="Not-the-password-1")
    assert e.value.status_code == 401
    assert e.value.error_code == "APIGW.0301"
    assert "username or password" in e.value.error_msg


def test_an_unknown_token_is_refused_by_ecs(ecsd):
    with pytest.raises(ClientRequestException) as e:
        ecs_with_token(ecsd, "MIInot-a-token").list_servers_details(ListServersDetailsRequest())
    assert e.value.status_code == 401
    assert e.value.error_code == "APIGW.0301"
    assert "decrypt token fail" in e.value.error_msg


def temporary_credentials(ecsd, token, seconds=900):
    def add_token(request, **_):
        # CreateTemporaryAccessKeyByToken authenticates with X-Auth-Token.
        request.header_params.pop("Authorization", None)
        request.header_params["X-Auth-Token"] = token
    client = iam_client(ecsd, HttpHandler().add_request_handler(add_token))
    client.preset_headers = {"Authorization": "placeholder"}
    body = CreateTemporaryAccessKeyByTokenRequestBody(auth=TokenAuth(identity=TokenAuthIdentity(
        methods=["token"], token=IdentityToken(duration_seconds=seconds))))
    return client.create_temporary_access_key_by_token(
        CreateTemporaryAccessKeyByTokenRequest(body=body)).credential


def ecs_with_keys(ecsd, ak, sk, security_token=None):
    cred = BasicCredentials(ak, sk, ecsd.project_id)
    if security_token is not None:
        cred = cred.with_security_token(security_token)
    return (EcsClient.new_builder().with_credentials(cred).with_http_config(http_config(ecsd))
            .with_endpoints([ecsd.endpoint]).build())


def test_the_ecs_sdk_works_with_temporary_credentials_and_their_security_token(ecsd):
    token = password_login(ecsd).x_subject_token
    cred = temporary_credentials(ecsd, token)
    assert cred.access and cred.secret and cred.securitytoken and cred.expires_at

    servers = ecs_with_keys(ecsd, cred.access, cred.secret, cred.securitytoken) \
        .list_servers_details(ListServersDetailsRequest())
    assert servers.count == len(ecsd.creds["servers"])

    # The same AK/SK without the security token, or with another one, is refused.
    for st in (None, "ST" + "0" * 64):
        with pytest.raises(ClientRequestException) as e:
            ecs_with_keys(ecsd, cred.access, cred.secret, st) \
                .list_servers_details(ListServersDetailsRequest())
        assert e.value.status_code == 401
        assert e.value.error_code == "APIGW.0301"
