// A local OpenID Connect provider (the maintained `oidc-provider` package) for the tests and the
// demo: people sign in through its own login and consent pages; their ID tokens carry `name`,
// `email` and the `hru_party` claim that says which party they work for.
//
//   node idp.mjs CONFIG.json
//
// CONFIG: {"port": N, "clients": [{"client_id", "redirect_uris": [...], "post_logout_redirect_uris": [...]}],
//          "accounts": {"<login>": {"name", "email", "hru_party"}}}
// Prints "listening <issuer>" once it serves. A login not in `accounts` gets no token (the
// provider's development login pages check no password: this provider is for tests and the demo,
// never for people's real accounts).
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;

const provider = new Provider(issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    token_endpoint_auth_method: 'none',
    redirect_uris: c.redirect_uris,
    post_logout_redirect_uris: c.post_logout_redirect_uris || [],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  })),
  claims: { openid: ['sub'], profile: ['name', 'hru_party'], email: ['email'] },
  // The relying party reads who the person is from the ID token alone.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: { IdToken: 600, AccessToken: 600, Session: 3600, Interaction: 600, Grant: 3600 },
  async findAccount(ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: account.name, email: account.email, hru_party: account.hru_party };
      },
    };
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(config.port, '127.0.0.1', () => console.log(`listening ${issuer}`));
