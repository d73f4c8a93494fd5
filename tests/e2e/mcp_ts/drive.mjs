// Drives Interlock's MCP gateway with the TypeScript SDK, v1 (@modelcontextprotocol/sdk) or v2
// (@modelcontextprotocol/client), for tests/e2e/test_mcp_spec.py.
//
//   node drive.mjs '<json options>'
//
// Options: sdk ("v1" | "v2"), scenario ("session" | "origin" | "resume"), url (the /mcp URL),
// and either clientId + clientSecret + issuer (OAuth client credentials, found by discovery) or
// token (a static bearer header). v2 also takes mode ("legacy" | "auto"). Prints one JSON object.

import * as v1Client from '@modelcontextprotocol/sdk/client/index.js';
import * as v1Http from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import * as v1Auth from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import * as v2 from '@modelcontextprotocol/client';

const opts = JSON.parse(process.argv[2]);
const info = { name: `interlock-tests-${opts.sdk}`, version: '1.0.0' };

function connectParts() {
  const headers = { ...(opts.headers ?? {}) };
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  const requestInit = { headers };
  if (opts.sdk === 'v1') {
    const authProvider = opts.clientId
      ? new v1Auth.ClientCredentialsProvider({
          clientId: opts.clientId,
          clientSecret: opts.clientSecret,
          expectedIssuer: opts.issuer,
        })
      : undefined;
    const transport = new v1Http.StreamableHTTPClientTransport(new URL(opts.url), {
      authProvider,
      requestInit,
      reconnectionOptions: {
        initialReconnectionDelay: 100,
        maxReconnectionDelay: 2000,
        reconnectionDelayGrowFactor: 1.5,
        maxRetries: 5,
      },
    });
    return { client: new v1Client.Client(info, { capabilities: {} }), transport };
  }
  const authProvider = opts.clientId
    ? new v2.ClientCredentialsProvider({
        clientId: opts.clientId,
        clientSecret: opts.clientSecret,
        expectedIssuer: opts.issuer,
      })
    : undefined;
  const transport = new v2.StreamableHTTPClientTransport(new URL(opts.url), { authProvider, requestInit });
  const client = new v2.Client(info, {
    capabilities: {},
    versionNegotiation: { mode: opts.mode ?? 'legacy' },
  });
  return { client, transport };
}

function describeError(err) {
  // JSON-RPC errors carry a numeric code; transport errors an HTTP status somewhere.
  return {
    code: err?.code,
    status: err?.status ?? err?.response?.status ?? err?.data?.status,
    message: String(err?.message ?? err),
    name: err?.name,
  };
}

async function attempt(fn) {
  try {
    return { ok: await fn() };
  } catch (err) {
    return { error: describeError(err) };
  }
}

async function listAll(client) {
  const names = [];
  let cursor;
  let pages = 0;
  do {
    const page = await client.listTools(cursor === undefined ? {} : { cursor });
    pages += 1;
    names.push(...page.tools.map((t) => t.name));
    cursor = page.nextCursor;
  } while (cursor !== undefined && pages < 1000);
  return { names, pages };
}

function call(client, name, args) {
  return client.callTool({ name, arguments: args }, undefined, { timeout: 180_000 });
}

async function session() {
  const { client, transport } = connectParts();
  await client.connect(transport);
  const out = {
    protocolVersion: transport.protocolVersion ?? client.getNegotiatedProtocolVersion?.() ?? null,
    sessionId: transport.sessionId ?? null,
  };
  out.list = await listAll(client);
  out.echo = await attempt(() => call(client, 'echo', { text: 'hello from TypeScript' }));
  out.denied = await attempt(() => call(client, 'transfer', { amount: 500 }));
  out.allowed = await attempt(() => call(client, 'transfer', { amount: 5 }));
  out.hidden = await attempt(() => call(client, 'purge', {}));
  out.unknown = await attempt(() => call(client, 'no_such_tool', {}));
  out.badCursor = await attempt(() => client.listTools({ cursor: 'bm90IGEgY3Vyc29y' }));
  await client.close();
  return out;
}

async function origin() {
  const { client, transport } = connectParts();
  const result = await attempt(() => client.connect(transport));
  await client.close().catch(() => {});
  return result.error ? { refused: result.error } : { connected: true };
}

async function resume() {
  const { client, transport } = connectParts();
  const errors = [];
  client.onerror = (err) => errors.push(String(err?.message ?? err));
  await client.connect(transport);
  const result = await attempt(() => call(client, 'slow_echo', { text: opts.text }));
  await client.close();
  return { result, protocolVersion: transport.protocolVersion ?? null, errors };
}

const scenarios = { session, origin, resume };
try {
  const out = await scenarios[opts.scenario]();
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
} catch (err) {
  process.stdout.write(JSON.stringify({ crashed: describeError(err), stack: String(err?.stack) }) + '\n');
  process.exit(1);
}
