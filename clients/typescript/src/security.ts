// TLS (with a client certificate for mTLS) and an API key on every call: what VisionSearchClient needs to reach
// a server started with --tls-cert/--tls-key (--tls-client-ca) and --api-keys. The Python client's
// counterpart is clients/python/src/visionsearch_client/_channel.py.
import type { SecureClientSessionOptions } from "node:http2";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** PEM text, as a string or bytes (e.g. `readFileSync("ca.pem")`). */
export type Pem = string | Uint8Array;

export interface SecurityOptions {
  apiKey?: string;
  tls?: boolean;
  rootCertificates?: Pem;
  privateKey?: Pem;
  certificateChain?: Pem;
}

export interface Security {
  /** The transport's base URL: https:// with TLS, http:// without. */
  url: string;
  tls: boolean;
  /** TLS options of the HTTP/2 session (CA roots, client certificate); undefined for plaintext. */
  nodeOptions?: SecureClientSessionOptions;
}

function pemText(name: string, pem: Pem): string {
  const text =
    typeof pem === "string" ? pem : Buffer.from(pem.buffer, pem.byteOffset, pem.byteLength).toString("latin1");
  if (!text.includes("-----BEGIN ")) {
    throw new TypeError(`${name} must be PEM text (-----BEGIN ...), not a file name: pass readFileSync(path)`);
  }
  return text;
}

/** Where and how to connect; TypeError for options that contradict each other. */
export function security(address: string, options: SecurityOptions): Security {
  const scheme = /^(https?):\/\//.exec(address)?.[1];
  const { rootCertificates, privateKey, certificateChain } = options;
  const anyPem = rootCertificates !== undefined || privateKey !== undefined || certificateChain !== undefined;
  if (options.tls === false && (anyPem || scheme === "https")) {
    throw new TypeError("tls: false, but certificates or an https:// address were given: drop one or the other");
  }
  const tls = options.tls === true || anyPem || scheme === "https";
  if (tls && scheme === "http") {
    throw new TypeError(`TLS was asked for, but ${address} is a plaintext http:// URL: give host:port or https://`);
  }
  if ((privateKey === undefined) !== (certificateChain === undefined)) {
    throw new TypeError("privateKey and certificateChain (a client certificate for mTLS) go together");
  }
  const url = scheme !== undefined ? address : `${tls ? "https" : "http"}://${address}`;
  if (!tls) return { url, tls };
  const nodeOptions: SecureClientSessionOptions = {};
  if (rootCertificates !== undefined) nodeOptions.ca = pemText("rootCertificates", rootCertificates);
  if (privateKey !== undefined) nodeOptions.key = pemText("privateKey", privateKey);
  if (certificateChain !== undefined) nodeOptions.cert = pemText("certificateChain", certificateChain);
  return { url, tls, nodeOptions };
}

/** Adds `authorization: Bearer <key>` to every call. */
function bearer(apiKey: string): Interceptor {
  if (apiKey === "") {
    throw new TypeError("apiKey is empty: pass the key `visionsearch-admin keys add` printed, or leave it out");
  }
  if (!/^[\x21-\x7e]+$/.test(apiKey)) {
    throw new TypeError(
      "apiKey has spaces or characters an HTTP header cannot carry: pass the key exactly as printed",
    );
  }
  const value = `Bearer ${apiKey}`;
  return (next) => async (req) => {
    req.header.set("authorization", value);
    return next(req);
  };
}

// Node's codes for a TLS handshake that failed: certificate checks (node:tls and OpenSSL's verify results)
// and alerts the server sent (ERR_SSL_...).
const TLS_FAILURE =
  /^(ERR_SSL_|ERR_TLS_|CERT_|UNABLE_TO_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$|EPROTO$)/;

function nodeCodes(err: unknown): string[] {
  const codes: string[] = [];
  for (let e = err, n = 0; e instanceof Error && n < 8; e = (e as { cause?: unknown }).cause, n++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
  }
  return codes;
}

function unavailable(err: ConnectError, why: string): ConnectError {
  return new ConnectError(`${err.rawMessage} (${why})`, Code.Unavailable, err.metadata, undefined, err);
}

/**
 * Failures of the connection become UNAVAILABLE with a hint, as gRPC's own clients report them; connect-node
 * reports a failed certificate check as INTERNAL, and a connection the server closed (what a grpc server
 * does to a client without the certificate it requires, or to plaintext on a TLS port) as CANCELED.
 * Statuses the server sent, and calls the caller cancelled, pass unchanged.
 */
function connectionErrors(tls: boolean, connectionClosed: () => boolean): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (err) {
      if (!(err instanceof ConnectError)) throw err;
      const codes = nodeCodes(err);
      if (codes.some((c) => TLS_FAILURE.test(c))) {
        throw unavailable(
          err,
          "the TLS handshake failed: check that the server's certificate is valid for this address and signed " +
            "by a CA in rootCertificates",
        );
      }
      if (err.code === Code.Canceled && !req.signal.aborted && connectionClosed()) {
        const why = tls
          ? "a server that requires client certificates (mTLS) closes the connection of a client without one " +
            "from its CA: pass privateKey and certificateChain"
          : "if it speaks TLS, pass rootCertificates (or tls: true)";
        throw new ConnectError(`the server closed the connection during the call; ${why}`, Code.Unavailable,
          err.metadata, undefined, err);
      }
      throw err;
    }
  };
}

/**
 * The interceptors of every call: connection failures as UNAVAILABLE (outermost), then the API key.
 * `connectionClosed` says whether the HTTP/2 session has closed or failed.
 */
export function securityInterceptors(
  sec: Security,
  apiKey: string | undefined,
  connectionClosed: () => boolean,
): Interceptor[] {
  const interceptors = [connectionErrors(sec.tls, connectionClosed)];
  if (apiKey !== undefined) interceptors.push(bearer(apiKey));
  return interceptors;
}
