// A real OpenID Connect provider for klaxon's sign-in tests: panva's
// certified oidc-provider on a free loopback port, with the development
// login and consent pages (any password), one confidential client and the
// accounts the test passes in. Prints {"issuer": "..."} once listening.
//
// Env: CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, ACCOUNTS (JSON: id -> claims).
import http from 'node:http';
import Provider from 'oidc-provider';

const accounts = JSON.parse(process.env.ACCOUNTS || '{}');
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'profile', 'groups'],
    // Claims in the ID token itself, as Google and Entra send them.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    cookies: { keys: ['klaxon-test-only-cookie-key'] },
    features: { devInteractions: { enabled: true } },
    findAccount: async (ctx, id) => {
      const claims = accounts[id];
      if (!claims) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
    },
  });
  server.on('request', provider.callback());
  process.stdout.write(JSON.stringify({ issuer }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
