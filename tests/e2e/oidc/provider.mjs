// A standards-conformant OpenID provider for the single sign-on tests, on 127.0.0.1 only.
// Usage: node provider.mjs PORT REDIRECT_URI[,REDIRECT_URI...] CLIENT_SECRET GROUPS_JSON
// GROUPS_JSON maps a login name to its groups, e.g. {"alice": ["interlock-approvers"]}.
// The development sign-in pages accept any login name with any password.
import Provider from 'oidc-provider';

const [port, redirects, secret, groupsJson] = process.argv.slice(2);
const groups = JSON.parse(groupsJson || '{}');

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    {
      client_id: 'interlock',
      client_secret: secret,
      redirect_uris: redirects.split(','),
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  cookies: { keys: ['interlock-test-cookie-key-0123456789'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.test`, groups: groups[id] || [] };
      },
    };
  },
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`oidc-provider ready on ${port}`);
});
