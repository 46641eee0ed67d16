// A real OpenID provider (panva's certified oidc-provider) for portcullis's integration tests.
//
// Started by tests/it/harness/idp.rs. Everything a test needs to observe or steer is here:
//   GET  /__stats          request counts per path, and per path + grant type for /token
//   POST /__stats/reset    zero the counts
//   POST /__ttl            {"IdToken": 1, ...}: token lifetimes (seconds) for tokens issued from now on
//   POST /__delay          {"path": "/token/introspection", "ms": 1000}: answer that path late (ms 0: on time)
//   POST /__mint           {"claims": {...}, "key": "provider"|"stranger", "kid"?: "..."}: a signed JWT,
//                          to build ID tokens the provider would never issue (wrong aud/iss, unknown key)
// Its state (tokens, grants, sessions, signing keys) lives in memory and is mirrored to IDP_STATE (a JSON
// file) when set, so a test can stop and restart the provider without losing the sessions it issued.
//
// RFC 8693 token exchange (grant_type urn:ietf:params:oauth:grant-type:token-exchange) issues an access token
// for the subject token's user with the requested `scope` and/or `audience` (introspection shows them as
// `scope` and `delegated_audience`, and `act.sub` = the client); a subject token that is not an active access
// token of the client is `invalid_grant`; a request for the scope or audience IDP_CONSENT_SCOPE (default
// "needs-consent") is `consent_required`, one for "needs-interaction" `interaction_required`.
//
// Environment: IDP_NEW_KEY=1 (replace the signing key kept in IDP_STATE), IDP_PORT (required), IDP_HOST (listen address, default 127.0.0.1), IDP_ISSUER (default http://127.0.0.1:PORT), IDP_TLS_CERT and IDP_TLS_KEY (serve HTTPS), IDP_STATE, IDP_TENANT
// (the `tid` claim, default "tenant-1"), IDP_CLIENTS (JSON array of client metadata replacing the default
// client), IDP_BACKCHANNEL_LOGOUT_URI and IDP_REDIRECT_URIS (comma-separated) for the default client.

import fs from 'node:fs';
import https from 'node:https';
import { Provider, errors } from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.env.IDP_PORT || 0);
if (!port) {
  console.error('IDP_PORT is required');
  process.exit(2);
}
// HTTPS when IDP_TLS_CERT and IDP_TLS_KEY name a PEM certificate and key (a private CA's, in the TLS tests).
const tls = process.env.IDP_TLS_CERT
  ? { cert: fs.readFileSync(process.env.IDP_TLS_CERT), key: fs.readFileSync(process.env.IDP_TLS_KEY) }
  : null;
const issuer = process.env.IDP_ISSUER || `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
const statePath = process.env.IDP_STATE || '';
const tenant = process.env.IDP_TENANT || 'tenant-1';

// ---------------------------------------------------------------------------------------------------------
// State: a Map of key -> { payload, exp (ms) }, mirrored to a file on every change.

const store = new Map();
let keys = null;

function loadState() {
  if (!statePath || !fs.existsSync(statePath)) return;
  const saved = JSON.parse(fs.readFileSync(statePath, 'utf8'));
  keys = saved.keys;
  for (const [k, v] of saved.entries) store.set(k, v);
}

function saveState() {
  if (!statePath) return;
  const tmp = `${statePath}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ keys, entries: [...store.entries()] }));
  fs.renameSync(tmp, statePath);
}

function get(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.exp && e.exp <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return e.payload;
}

function set(key, payload, expiresIn) {
  store.set(key, { payload, exp: typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : 0 });
}

/** oidc-provider's adapter interface over the file-mirrored map. */
class FileAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    set(this.key(id), payload, expiresIn);
    if (payload.grantId) {
      const gk = `grant:${payload.grantId}`;
      const members = get(gk) || [];
      if (!members.includes(this.key(id))) members.push(this.key(id));
      set(gk, members);
    }
    if (payload.uid) set(`uid:${payload.uid}`, id, expiresIn);
    if (payload.userCode) set(`userCode:${payload.userCode}`, id, expiresIn);
    saveState();
  }

  async find(id) {
    return get(this.key(id));
  }

  async findByUid(uid) {
    const id = get(`uid:${uid}`);
    return id ? this.find(id) : undefined;
  }

  async findByUserCode(userCode) {
    const id = get(`userCode:${userCode}`);
    return id ? this.find(id) : undefined;
  }

  async consume(id) {
    const e = store.get(this.key(id));
    if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
    saveState();
  }

  async destroy(id) {
    store.delete(this.key(id));
    saveState();
  }

  async revokeByGrantId(grantId) {
    const gk = `grant:${grantId}`;
    for (const k of get(gk) || []) store.delete(k);
    store.delete(gk);
    saveState();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Keys: the provider's signing key (in its JWKS) and a stranger's (never published).

async function makeKey(kid) {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid, alg: 'RS256', use: 'sig' };
}

loadState();
if (!keys) {
  keys = { provider: await makeKey(`idp-${Date.now()}`), stranger: await makeKey('stranger') };
  saveState();
}
// IDP_NEW_KEY=1: the provider withdraws its signing key and publishes a new one (key rotation).
if (process.env.IDP_NEW_KEY === '1') {
  keys.provider = await makeKey(`idp-${Date.now()}`);
  saveState();
}

// ---------------------------------------------------------------------------------------------------------
// Clients, accounts, lifetimes.

const defaultClient = {
  client_id: 'portcullis',
  client_secret: 'portcullis-secret',
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials', 'urn:ietf:params:oauth:grant-type:token-exchange'],
  response_types: ['code'],
  redirect_uris: (process.env.IDP_REDIRECT_URIS || 'http://127.0.0.1:8080/oauth2/callback').split(','),
  post_logout_redirect_uris: ['http://127.0.0.1:8080/'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...(process.env.IDP_BACKCHANNEL_LOGOUT_URI
    ? { backchannel_logout_uri: process.env.IDP_BACKCHANNEL_LOGOUT_URI, backchannel_logout_session_required: true }
    : {}),
};
const clients = process.env.IDP_CLIENTS ? JSON.parse(process.env.IDP_CLIENTS) : [defaultClient];

/** Token lifetimes in seconds; POST /__ttl changes them for tokens issued afterwards. */
const ttls = {
  AccessToken: 3600,
  ClientCredentials: 3600,
  IdToken: 3600,
  RefreshToken: 86400,
  AuthorizationCode: 60,
  Interaction: 600,
  Session: 86400,
  Grant: 86400,
};

const ttl = Object.fromEntries(Object.keys(ttls).map((k) => [k, () => ttls[k]]));

/** Any login name is an account; its claims are derived from the name. */
async function findAccount(_ctx, sub) {
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        email: `${sub}@example.com`,
        email_verified: !sub.startsWith('unverified'),
        name: `User ${sub}`,
        groups: ['users', `team-${sub}`],
        tid: tenant,
        oid: `oid-${sub}`,
      };
    },
  };
}

const configuration = {
  adapter: FileAdapter,
  clients,
  jwks: { keys: [keys.provider] },
  findAccount,
  claims: {
    openid: ['sub', 'tid', 'oid'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // A token-exchange token's delegation claims (introspection shows them); other tokens have none.
  extraTokenClaims: async (_ctx, token) => token.delegation,
  // The ID token carries the claims (not only userinfo), as Ping and Entra do.
  conformIdTokenClaims: false,
  cookies: {
    keys: ['portcullis-test-idp-cookie-key'],
    // Cookies are not port-scoped: keep clear of portcullis's GATEWAY_SESSION on 127.0.0.1.
    names: { session: 'idp_session', interaction: 'idp_interaction', resume: 'idp_interaction_resume' },
  },
  pkce: { required: () => true },
  ttl,
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Revoking any token ends its grant (refresh token included), as revoking a session does at Ping.
  revokeGrantPolicy: () => true,
  // No consent page: the requested scopes are granted.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const existing = await ctx.oidc.provider.Grant.find(grantId);
      if (existing) return existing;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
    await grant.save();
    return grant;
  },
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  // oidc-provider 9 refuses loopback targets for outgoing requests; back-channel logout to a test
  // portcullis on 127.0.0.1 needs them.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
};

const provider = new Provider(issuer, configuration);
provider.proxy = false;

// ---------------------------------------------------------------------------------------------------------
// RFC 8693 token exchange: a delegated access token for the subject token's user.

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const consentScope = process.env.IDP_CONSENT_SCOPE || 'needs-consent';

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be an access token');
  }
  if (!params.subject_token) throw new errors.InvalidRequest('subject_token is required');
  const wanted = [...(params.scope || '').split(' '), params.audience || ''].filter(Boolean);
  if (!wanted.length) throw new errors.InvalidRequest('scope or audience is required');
  const subject = await provider.AccessToken.find(params.subject_token);
  if (!subject || !subject.isValid || subject.clientId !== client.clientId) {
    throw new errors.InvalidGrant('subject_token is not an active access token of this client');
  }
  if (wanted.includes(consentScope)) throw new errors.ConsentRequired(`the user has not consented to ${consentScope}`);
  if (wanted.includes('needs-interaction')) throw new errors.InteractionRequired('the user must sign in again');
  const token = new provider.AccessToken({
    accountId: subject.accountId,
    client,
    grantId: subject.grantId,
    gty: 'token_exchange',
    sid: subject.sid,
    scope: params.scope || undefined,
  });
  // Kept in the token by extraTokenClaims below (oidc-provider fills `extra` from it when saving).
  token.delegation = { act: { sub: client.clientId }, delegated_audience: params.audience || undefined };
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope || undefined,
  };
}

provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, [
  'subject_token',
  'subject_token_type',
  'requested_token_type',
  'scope',
  'audience',
]);

// ---------------------------------------------------------------------------------------------------------
// Test hooks.

const stats = {};
const delays = {};
const count = (k) => {
  stats[k] = (stats[k] || 0) + 1;
};

async function readJson(ctx) {
  const chunks = [];
  for await (const c of ctx.req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/__stats' && ctx.method === 'GET') {
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/__stats/reset' && ctx.method === 'POST') {
    for (const k of Object.keys(stats)) delete stats[k];
    ctx.status = 204;
    return;
  }
  if (ctx.path === '/__ttl' && ctx.method === 'POST') {
    Object.assign(ttls, await readJson(ctx));
    ctx.body = ttls;
    return;
  }
  if (ctx.path === '/__mint' && ctx.method === 'POST') {
    const { claims, key = 'provider', kid } = await readJson(ctx);
    const jwk = keys[key];
    const signer = await jose.importJWK(jwk, 'RS256');
    ctx.body = await new jose.SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: kid || jwk.kid })
      .sign(signer);
    ctx.type = 'text/plain';
    return;
  }
  if (ctx.path === '/__delay' && ctx.method === 'POST') {
    const { path, ms } = await readJson(ctx);
    delays[path] = ms;
    ctx.body = delays;
    return;
  }
  count(ctx.path);
  if (delays[ctx.path]) await new Promise((r) => setTimeout(r, delays[ctx.path]));
  await next();
  const grantType = ctx.oidc?.params?.grant_type;
  if (grantType) count(`${ctx.path}:${grantType}`);
});

// Ping-style introspection: `Authorization: Bearer <client-credentials token>` stands for the client
// that holds the token. oidc-provider itself only accepts client authentication there.
provider.use(async (ctx, next) => {
  const auth = ctx.get('authorization');
  if (ctx.path === '/token/introspection' && auth.startsWith('Bearer ')) {
    const cc = await provider.ClientCredentials.find(auth.slice(7).trim());
    const client = cc && clients.find((c) => c.client_id === cc.clientId);
    if (!client) {
      ctx.status = 401;
      ctx.body = { error: 'invalid_token', error_description: 'unknown or expired bearer token' };
      return;
    }
    const basic = `${encodeURIComponent(client.client_id)}:${encodeURIComponent(client.client_secret)}`;
    ctx.req.headers.authorization = `Basic ${Buffer.from(basic).toString('base64')}`;
  }
  await next();
});

const host = process.env.IDP_HOST || '127.0.0.1';
const listening = () => console.log(`test idp listening on ${issuer}`);
if (tls) {
  https.createServer(tls, provider.callback()).listen(port, host, listening);
} else {
  provider.listen(port, host, listening);
}
