// An independent verifier of Interlock evidence bundles, written from docs/audit-format.md alone.
// It shares no code with Interlock and uses nothing but Node's standard library (node:crypto,
// node:fs, node:process). Section numbers below refer to that document.
//
//   node verify.mjs BUNDLE.json --public-key HEX [--package-key HEX] [--consistency FILE.json]
//   node verify.mjs --public-key HEX --consistency FILE.json
//
// FILE.json is what `interlock audit consistency --from M --json` prints: two checkpoints and the
// RFC 9162 proof that the later extends the earlier.
// Prints {"ok", "problems", "warnings", "events", "checkpoint_seq", "consistency"} as JSON and
// exits 0 when the bundle verifies, 1 when it does not, 2 on a usage error.

import { createHash, createPublicKey, verify as edVerify } from "node:crypto";
import { readFileSync } from "node:fs";
import process, { argv, stdout } from "node:process";

// ---- §1 canonical JSON (RFC 8785) -------------------------------------------------------------

function jcs(value) {
  if (value === null || typeof value === "boolean" || typeof value === "string") {
    return JSON.stringify(value);
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error("non-finite number");
    if (Number.isInteger(value) && !Number.isSafeInteger(value) && Math.abs(value) < 1e21) {
      throw new Error(`integer ${value} is beyond 2^53: its exact digits are not known here`);
    }
    return JSON.stringify(value); // ECMAScript shortest round-trip form
  }
  if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
  // Array.prototype.sort compares UTF-16 code units, which is what RFC 8785 asks for.
  const keys = Object.keys(value).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + jcs(value[k])).join(",") + "}";
}

const sha256 = (data) => createHash("sha256").update(data).digest();
const hex = (data) => sha256(data).toString("hex");
const hashValue = (value) => hex(Buffer.from(jcs(value), "utf8"));
const same = (a, b) => {
  try {
    return jcs(a === undefined ? null : a) === jcs(b === undefined ? null : b);
  } catch {
    return false;
  }
};
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const has = (obj, name) => Object.prototype.hasOwnProperty.call(obj, name);

// ---- §4.1 keys and signatures --------------------------------------------------------------------

function ed25519Key(rawHex) {
  if (typeof rawHex !== "string" || !/^[0-9a-fA-F]{64}$/.test(rawHex)) {
    throw new Error("an Ed25519 public key is 64 hex digits");
  }
  const x = Buffer.from(rawHex, "hex").toString("base64url");
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
}

const keyId = (rawHex) => hex(Buffer.from(rawHex, "hex")).slice(0, 16);

function signedBy(key, message, signatureHex) {
  if (typeof signatureHex !== "string" || !/^[0-9a-fA-F]{128}$/.test(signatureHex)) return false;
  return edVerify(null, Buffer.from(message, "utf8"), key, Buffer.from(signatureHex, "hex"));
}

// ---- §2 the chain, §3 the tree ---------------------------------------------------------------------

const GENESIS = "0".repeat(64);
const eventHash = (prevHash, body) => hex(Buffer.from(prevHash + body, "utf8"));
const leaf = (eventHashHex) => sha256(Buffer.concat([Buffer.from([0]), Buffer.from(eventHashHex, "hex")]));
const node = (left, right) => sha256(Buffer.concat([Buffer.from([1]), left, right]));

function verifyInclusion(leafHash, index, size, proof, root) {
  if (!(index >= 0 && index < size)) return false;
  let fn = index;
  let sn = size - 1;
  let r = leafHash;
  for (const p of proof) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = node(p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = node(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && r.equals(root);
}

function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
  if (!(first > 0 && first <= second)) return false;
  if (first === second) return proof.length === 0 && firstRoot.equals(secondRoot);
  const path = [...proof];
  if ((first & (first - 1)) === 0) path.unshift(firstRoot);
  if (path.length === 0) return false;
  let fn = first - 1;
  let sn = second - 1;
  while (fn % 2 === 1) {
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      fr = node(c, fr);
      sr = node(c, sr);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      sr = node(sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return fr.equals(firstRoot) && sr.equals(secondRoot) && sn === 0;
}

// ---- §4.2 checkpoints --------------------------------------------------------------------------

const CHECKPOINT_V2 = "interlock.audit.checkpoint/v2";
const CHECKPOINT_V1 = "interlock.audit.checkpoint/v1";

function checkpointVerifies(cp, key) {
  const signed = {
    type: cp.type,
    seq: cp.seq,
    tip_hash: cp.tip_hash,
    merkle_root: cp.merkle_root,
    ts: cp.ts,
    key_id: cp.key_id,
  };
  let message = jcs(signed);
  if (cp.type === CHECKPOINT_V1) {
    // The legacy form writes ts as a float: an integral value ends in ".0".
    if (Number.isInteger(cp.ts)) message = message.replace(`"ts":${cp.ts}`, `"ts":${cp.ts}.0`);
  } else if (cp.type !== CHECKPOINT_V2) {
    return false;
  }
  return signedBy(key, message, cp.signature);
}

// ---- §7 verifying a bundle -------------------------------------------------------------------------

const BUNDLE_V2 = "interlock.evidence/v2";
const PACKAGE_TYPE = "interlock-package+jwt";

const isPurgeMarker = (v) =>
  isObject(v) &&
  Object.keys(v).length === 2 &&
  v.purged === true &&
  typeof v.sha256 === "string";

function classify(value, argsHash) {
  if (value === null || value === undefined) return "absent";
  if (isPurgeMarker(value)) return "purged";
  try {
    return argsHash !== null && argsHash !== undefined && hashValue(value) === argsHash ? "bound" : "redacted";
  } catch {
    return "redacted";
  }
}

export function verifyBundle(bundle, trustedHex, packageHex) {
  const problems = [];
  const warnings = [];
  const fail = (message) => problems.push(message);
  const report = { ok: false, problems, warnings, events: 0, checkpoint_seq: null };
  if (!isObject(bundle)) {
    fail("a bundle is a JSON object");
    return report;
  }
  if (bundle.format !== BUNDLE_V2) {
    fail(`unknown bundle format ${JSON.stringify(bundle.format)} (this verifier reads ${BUNDLE_V2})`);
    return report;
  }
  const trusted = ed25519Key(trustedHex);
  const run = bundle.run;

  // 1-4: the keys and the two signatures.
  if (bundle.public_key?.ed25519 !== trustedHex.toLowerCase()) {
    fail("the public key in the bundle is not the trusted key");
  }
  const unsigned = Object.fromEntries(Object.entries(bundle).filter(([k]) => k !== "signature"));
  let canonical = null;
  try {
    canonical = jcs(unsigned);
  } catch (err) {
    fail(`the bundle has no canonical form here: ${err.message}`);
  }
  if (canonical !== null && !signedBy(trusted, canonical, bundle.signature)) {
    fail("bundle signature does not verify with the trusted key");
  }
  const cp = bundle.checkpoint;
  report.checkpoint_seq = cp.seq;
  if (!checkpointVerifies(cp, trusted)) {
    fail(`checkpoint ${cp.seq} signature does not verify with the trusted key`);
  }

  // 5: every event, its chain link and its inclusion proof.
  const root = Buffer.from(cp.merkle_root, "hex");
  const bodies = [];
  let previous = null;
  for (const event of bundle.events) {
    const seq = event.seq;
    if (!Number.isSafeInteger(seq) || seq < 1) {
      fail(`event with seq ${JSON.stringify(seq)}: not a positive integer`);
      continue;
    }
    if (eventHash(event.prev_hash, event.body) !== event.hash) {
      fail(`event ${seq}: hash does not match its body`);
    }
    let body;
    try {
      body = JSON.parse(event.body);
    } catch {
      fail(`event ${seq}: body is not JSON`);
      continue;
    }
    if (!isObject(body) || body.seq !== seq) {
      fail(`event ${seq}: body records another seq (${JSON.stringify(isObject(body) ? body.seq : null)})`);
      continue;
    }
    if (body.run_id !== run.id) fail(`event ${seq}: belongs to run ${JSON.stringify(body.run_id)}, not ${run.id}`);
    if (previous !== null) {
      if (seq <= previous.seq) fail(`event ${seq}: out of order after event ${previous.seq}`);
      else if (seq === previous.seq + 1 && event.prev_hash !== previous.hash) {
        fail(`event ${seq}: does not link to event ${previous.seq}`);
      }
    } else if (seq === 1 && event.prev_hash !== GENESIS) {
      fail("event 1: does not chain to the genesis hash");
    }
    if (seq > cp.seq) {
      fail(`event ${seq}: beyond checkpoint ${cp.seq}`);
    } else {
      let proof = null;
      try {
        proof = event.proof.map((p) => {
          if (!/^[0-9a-f]{64}$/.test(p)) throw new Error("not a hash");
          return Buffer.from(p, "hex");
        });
      } catch {
        proof = null;
      }
      if (proof === null || !verifyInclusion(leaf(event.hash), seq - 1, cp.seq, proof, root)) {
        fail(`event ${seq}: inclusion proof does not lead to the checkpoint's Merkle root`);
      }
    }
    if (seq === cp.seq && event.hash !== cp.tip_hash) fail(`event ${seq}: is not the checkpoint's tip`);
    bodies.push(body);
    previous = event;
  }
  report.events = bodies.length;
  const dataOf = (body) => (isObject(body.data) ? body.data : {});

  // 6: the run's beginning and end.
  const started = bodies.filter((b) => b.kind === "run.started");
  if (started.length === 0) fail(`run ${run.id}: its run.started event is missing`);
  else if (dataOf(started[0]).manifest_version !== run.workflow_version_id) {
    fail(`run ${run.id}: workflow version differs from its run.started event`);
  }
  if (run.ended_at !== null && run.ended_at !== undefined && !bodies.some((b) => b.kind === `run.${run.state}`)) {
    fail(`run ${run.id}: no run.${run.state} event records how it ended`);
  }

  // 7: steps against the first action event naming them.
  const actions = new Map();
  const named = new Set();
  for (const body of bodies) {
    const data = dataOf(body);
    if (typeof data.step !== "string") continue;
    named.add(data.step);
    if (String(body.kind).startsWith("action.") && !actions.has(data.step)) actions.set(data.step, data);
  }
  const payloads = bundle.payloads;
  const stepClaims = new Map(payloads.steps.map((p) => [p.step, p]));
  const checkArguments = (what, value, argsHash, claimed) => {
    const actual = classify(value, argsHash);
    if (actual === claimed) return;
    if (actual === "redacted" && claimed === "bound") fail(`${what}: arguments do not hash to the recorded argument hash`);
    else fail(`${what}: arguments are ${actual}, the bundle says ${claimed}`);
  };
  for (const step of bundle.steps) {
    const action = actions.get(step.id);
    if (action === undefined) {
      if (step.kind === "tool" || !named.has(step.id)) fail(`step ${step.id}: no audit event records it`);
      continue;
    }
    if (step.args_hash !== action.args_hash) fail(`step ${step.id}: argument hash differs from its audit event`);
    if (step.tool !== action.tool || step.seq !== action.seq) {
      fail(`step ${step.id}: tool or position differs from its audit event`);
    }
    checkArguments(`step ${step.id}`, step.arguments, step.args_hash, stepClaims.get(step.id)?.arguments);
    const result = step.result;
    const resultHash = action.result_hash ?? null;
    if (result === null || result === undefined) {
      if (resultHash !== null) fail(`step ${step.id}: result is missing but its audit event hashed one`);
    } else if (isPurgeMarker(result)) {
      if (result.sha256 !== resultHash) fail(`step ${step.id}: purged result's hash differs from its audit event`);
    } else {
      let actual = null;
      try {
        actual = hashValue(result);
      } catch {
        actual = null;
      }
      if (actual !== resultHash) fail(`step ${step.id}: result does not hash to its audit event's result hash`);
    }
  }

  // 8: decisions.
  for (const decision of bundle.decisions) {
    const action = actions.get(decision.step_id ?? decision.id);
    if (action === undefined) {
      fail(`decision ${decision.id}: no audit event records it`);
      continue;
    }
    for (const name of ["decision", "args_hash", "tool", "manifest_version", "policy_version", "policy_ids"]) {
      if (!same(decision[name], action[name])) fail(`decision ${decision.id}: ${name} differs from its audit event`);
    }
    const codes = (decision.reasons ?? []).map((r) => r.code);
    if (!same(codes, action.reasons)) fail(`decision ${decision.id}: reasons differ from its audit event`);
    checkArguments(`decision ${decision.id}`, decision.arguments, decision.args_hash, payloads.decisions[decision.id]);
  }

  // 9 and §7.1: approvals, rebuilt from their events, against their rows and votes.
  const rebuilt = new Map();
  for (const body of bodies) {
    const kind = String(body.kind);
    const data = dataOf(body);
    if (!kind.startsWith("approval.") || typeof data.approval !== "string") continue;
    if (!rebuilt.has(data.approval)) {
      rebuilt.set(data.approval, { request: null, state: "pending", decidedBy: [], comment: null, votes: new Map() });
    }
    const ex = rebuilt.get(data.approval);
    const operator = data.operator;
    const comment = data.comment ?? null;
    if (kind === "approval.requested") {
      ex.request = data;
    } else if (kind === "approval.voted" && typeof operator === "string") {
      ex.votes.set(operator, [data.vote ?? "approve", comment]);
    } else if (kind === "approval.approved" || kind === "approval.rejected") {
      const approved = kind === "approval.approved";
      ex.state = approved ? "approved" : "rejected";
      ex.comment = comment;
      if (typeof operator === "string") ex.votes.set(operator, [approved ? "approve" : "reject", comment]);
      ex.decidedBy = Array.isArray(data.decided_by) ? data.decided_by : operator ? [operator] : [];
    } else if (kind === "approval.cancelled" || kind === "approval.expired") {
      ex.state = kind.slice("approval.".length);
      ex.comment = comment;
      ex.decidedBy = typeof operator === "string" ? [operator] : [];
    }
  }
  const votesByApproval = new Map();
  for (const vote of bundle.approval_votes) {
    if (!votesByApproval.has(vote.approval_id)) votesByApproval.set(vote.approval_id, []);
    votesByApproval.get(vote.approval_id).push(vote);
  }
  const orNull = (v) => (v === "" || v === undefined ? null : v);
  for (const approval of bundle.approvals) {
    const aid = approval.id;
    const ex = rebuilt.get(aid);
    const votes = votesByApproval.get(aid) ?? [];
    votesByApproval.delete(aid);
    checkArguments(`approval ${aid}`, approval.arguments, approval.args_hash, payloads.approvals[aid]);
    if (ex === undefined || ex.request === null) {
      fail(`approval ${aid}: no approval.requested event records it`);
      continue;
    }
    for (const [name, eventName] of [["args_hash", "args_hash"], ["step_id", "step"], ["tool", "tool"], ["quorum", "quorum"]]) {
      if (has(approval, name) && has(ex.request, eventName) && !same(approval[name], ex.request[eventName])) {
        fail(`approval ${aid}: ${name} reads ${JSON.stringify(approval[name])} but its events say ${JSON.stringify(ex.request[eventName])}`);
      }
    }
    if (approval.state !== ex.state) {
      fail(`approval ${aid}: state reads ${JSON.stringify(approval.state)} but its events say ${JSON.stringify(ex.state)}`);
    }
    if (!same(approval.decided_by ?? [], ex.decidedBy)) {
      fail(`approval ${aid}: decided_by reads ${JSON.stringify(approval.decided_by ?? [])} but its events say ${JSON.stringify(ex.decidedBy)}`);
    }
    if (orNull(approval.comment) !== orNull(ex.comment)) fail(`approval ${aid}: comment differs from its events`);
    const stored = new Map(votes.map((v) => [v.operator_id, [v.vote, v.comment ?? null]]));
    for (const [operator, [vote, comment]] of [...stored.entries()].sort()) {
      const recorded = ex.votes.get(operator);
      if (recorded === undefined) fail(`approval ${aid}: a ${vote} vote by ${JSON.stringify(operator)} is stored but no event records it`);
      else if (recorded[0] !== vote || orNull(recorded[1]) !== orNull(comment)) {
        fail(`approval ${aid}: the vote by ${JSON.stringify(operator)} differs from its event`);
      }
    }
    for (const operator of [...ex.votes.keys()].sort()) {
      if (!stored.has(operator)) fail(`approval ${aid}: the vote by ${JSON.stringify(operator)} its events record is missing`);
    }
  }
  for (const aid of [...votesByApproval.keys()].sort()) fail(`votes for approval ${aid}, which is not in the bundle`);

  // 10: manifest and policy texts.
  const versions = new Map(bundle.workflow_versions.map((v) => [v.id, v]));
  for (const [vid, version] of versions) {
    const digest = hex(Buffer.from(version.manifest, "utf8"));
    if (digest !== version.sha256 || !vid.endsWith("#" + digest.slice(0, 12))) {
      fail(`workflow version ${vid}: manifest text does not hash to the version`);
    }
    if (version.cedar_schema === null || version.cedar_schema === undefined) {
      warnings.push(`workflow version ${vid}: policy text unchecked (no Cedar schema in the bundle)`);
    } else if (hex(Buffer.from(version.cedar_policies + version.cedar_schema, "utf8")) !== version.policy_sha256) {
      fail(`workflow version ${vid}: Cedar policy text does not hash to the version`);
    }
  }
  if (!versions.has(run.workflow_version_id)) {
    fail(`run ${run.id}: its workflow version ${run.workflow_version_id} is not in the bundle`);
  }
  for (const decision of bundle.decisions) {
    const version = versions.get(decision.manifest_version);
    if (version === undefined) fail(`decision ${decision.id}: manifest version ${JSON.stringify(decision.manifest_version)} is not in the bundle`);
    else if (decision.policy_version !== version.policy_sha256) {
      fail(`decision ${decision.id}: policy version is not the one stored with ${decision.manifest_version}`);
    }
  }

  // 11: the work package.
  const pkg = bundle.package;
  if (pkg === null || pkg === undefined) {
    if (run.package_id !== null && run.package_id !== undefined) {
      fail(`run ${run.id}: started with package ${run.package_id}, which is not in the bundle`);
    }
  } else {
    checkPackage(pkg, run, packageHex, fail, warnings);
  }

  report.ok = problems.length === 0;
  return report;
}

function checkPackage(pkg, run, packageHex, fail, warnings) {
  const pid = pkg.id;
  let keyHex = pkg.public_key?.ed25519 ?? null;
  if (packageHex !== undefined) {
    if (keyHex !== null && keyHex !== packageHex.toLowerCase()) {
      fail(`package ${pid}: signed with another package key than the trusted one`);
    }
    keyHex = packageHex.toLowerCase();
  }
  if (keyHex === null) {
    warnings.push(`package ${pid}: signature unchecked (the bundle names no package key)`);
    return;
  }
  const parts = typeof pkg.token === "string" ? pkg.token.split(".") : [];
  if (parts.length !== 3) {
    fail(`package ${pid}: the token is not a compact JWS`);
    return;
  }
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString("utf8"));
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    fail(`package ${pid}: the token is not readable base64url JSON`);
    return;
  }
  if (header.alg !== "EdDSA" || header.typ !== PACKAGE_TYPE) {
    fail(`package ${pid}: the token is not an EdDSA work package`);
    return;
  }
  if (header.kid !== keyId(keyHex)) fail(`package ${pid}: the token names key ${header.kid}, not the package key`);
  const signature = Buffer.from(parts[2], "base64url");
  if (!edVerify(null, Buffer.from(`${parts[0]}.${parts[1]}`, "ascii"), ed25519Key(keyHex), signature)) {
    fail(`package ${pid}: the token's signature does not verify with the package key`);
    return;
  }
  if (!same(claims, pkg.claims)) fail(`package ${pid}: stored claims differ from the signed token's`);
  if (claims.jti !== pid || run.package_id !== pid) {
    fail(`package ${pid}: the token's id, the package and the run's package_id differ`);
  }
  for (const [claim, field] of [["workflow", "workflow"], ["agent", "agent_id"], ["environment", "environment"]]) {
    if (claims[claim] !== run[field]) fail(`package ${pid}: signed for ${claim} ${claims[claim]}, the run's is ${run[field]}`);
  }
}

// §3, §4.2: `interlock audit consistency --json` output, checked with the same trusted key.
export function verifyConsistencyFile(doc, trustedHex) {
  const key = ed25519Key(trustedHex);
  const problems = [];
  for (const cp of [doc.first, doc.second]) {
    if (!checkpointVerifies(cp, key)) problems.push(`checkpoint ${cp.seq} signature does not verify with the trusted key`);
  }
  const proof = doc.consistency.map((p) => Buffer.from(p, "hex"));
  const a = doc.first;
  const b = doc.second;
  if (!verifyConsistency(a.seq, b.seq, Buffer.from(a.merkle_root, "hex"), Buffer.from(b.merkle_root, "hex"), proof)) {
    problems.push(`checkpoint ${b.seq} does not extend checkpoint ${a.seq}: the consistency proof fails`);
  }
  return { ok: problems.length === 0, first: a.seq, second: b.seq, problems };
}

function main(args) {
  const options = {};
  const positional = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i].startsWith("--")) options[args[i].slice(2)] = args[++i];
    else positional.push(args[i]);
  }
  const bundleless = positional.length === 0 && options.consistency !== undefined;
  if ((positional.length !== 1 && !bundleless) || typeof options["public-key"] !== "string") {
    process.stderr.write(
      "usage: node verify.mjs [BUNDLE.json] --public-key HEX [--package-key HEX] [--consistency FILE]\n",
    );
    return 2;
  }
  let report = { ok: true, problems: [], warnings: [], events: 0, checkpoint_seq: null };
  if (!bundleless) {
    try {
      const bundle = JSON.parse(readFileSync(positional[0], "utf8"));
      report = verifyBundle(bundle, options["public-key"], options["package-key"]);
    } catch (err) {
      report = { ok: false, problems: [`malformed bundle: ${err.message}`], warnings: [], events: 0, checkpoint_seq: null };
    }
  }
  if (options.consistency !== undefined) {
    try {
      report.consistency = verifyConsistencyFile(JSON.parse(readFileSync(options.consistency, "utf8")), options["public-key"]);
    } catch (err) {
      report.consistency = { ok: false, problems: [`malformed consistency proof: ${err.message}`] };
    }
    if (!report.consistency.ok) report.ok = false;
  }
  stdout.write(JSON.stringify(report, null, 2) + "\n");
  return report.ok ? 0 : 1;
}

process.exitCode = main(argv.slice(2));
