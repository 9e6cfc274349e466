// DPoP proofs for tests/dpop.rs, made by panva's `dpop` library (npm, RFC 9449) on Node's WebCrypto.
// Run with the directory holding node_modules/dpop as the working directory. Reads one JSON
// request per line on stdin, answers one JSON line each on stdout:
//   {"op":"key","alg":"ES256"}                        -> {"key":0,"jkt":"<RFC 7638 thumbprint>"}
//   {"op":"proof","key":0,"htm":"GET","htu":"…","token":"…","nonce":"…","at":<epoch s>}
//                                                     -> {"proof":"<compact JWS>"}
//   {"op":"craft", …same…, "header":{…},"claims":{…},"sign_key":1,"signature":"corrupt"|"none",
//    "private_jwk":true}                              -> {"proof":"…"}
// `proof` is the library's own proof (`at` moves the library's clock); `craft` takes such a proof
// apart, applies the overrides (a null member is removed) and signs it again with the key's
// private key, to violate one RFC 9449 §4.3 rule at a time.
import { createInterface } from 'node:readline';
import * as dpop from 'dpop';

const keys = [];
const enc = new TextEncoder();
const b64u = (bytes) => Buffer.from(bytes).toString('base64url');
const decode = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

function subtleParams(key) {
  switch (key.algorithm.name) {
    case 'ECDSA':
      return { name: 'ECDSA', hash: 'SHA-256' };
    case 'RSA-PSS':
      return { name: 'RSA-PSS', saltLength: 32 };
    default:
      return { name: key.algorithm.name };
  }
}

async function libraryProof(req) {
  const pair = keys[req.key];
  const realNow = Date.now;
  if (typeof req.at === 'number') {
    Date.now = () => req.at * 1000;
  }
  try {
    return await dpop.generateProof(pair, req.htu, req.htm, req.nonce ?? undefined, req.token ?? undefined);
  } finally {
    Date.now = realNow;
  }
}

function apply(obj, overrides) {
  for (const [k, v] of Object.entries(overrides ?? {})) {
    if (v === null) delete obj[k];
    else obj[k] = v;
  }
  return obj;
}

async function craft(req) {
  const [h, p] = (await libraryProof(req)).split('.');
  const header = apply(decode(h), req.header);
  if (req.private_jwk) {
    const { kty, crv, x, y, n, e, d } = await crypto.subtle.exportKey('jwk', keys[req.key].privateKey);
    header.jwk = Object.fromEntries(Object.entries({ kty, crv, x, y, n, e, d }).filter(([, v]) => v !== undefined));
  }
  const claims = apply(decode(p), req.claims);
  const input = `${b64u(enc.encode(JSON.stringify(header)))}.${b64u(enc.encode(JSON.stringify(claims)))}`;
  if (req.signature === 'none') return `${input}.`;
  const signer = keys[req.sign_key ?? req.key].privateKey;
  const sig = new Uint8Array(await crypto.subtle.sign(subtleParams(signer), signer, enc.encode(input)));
  if (req.signature === 'corrupt') sig[sig.length - 1] ^= 1;
  return `${input}.${b64u(sig)}`;
}

async function handle(req) {
  switch (req.op) {
    case 'key': {
      const pair = await dpop.generateKeyPair(req.alg, { extractable: true });
      keys.push(pair);
      return { key: keys.length - 1, jkt: await dpop.calculateThumbprint(pair.publicKey) };
    }
    case 'proof':
      return { proof: await libraryProof(req) };
    case 'craft':
      return { proof: await craft(req) };
    default:
      throw new Error(`unknown op ${req.op}`);
  }
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  let out;
  try {
    out = await handle(JSON.parse(line));
  } catch (e) {
    out = { error: String(e && e.stack || e) };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}
