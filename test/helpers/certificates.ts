import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface TestCertificate {
  certFile: string;
  keyFile: string;
  /** PEM of the (self-signed) certificate: what a client trusts as its CA. */
  cert: string;
  /** SHA-256 fingerprint as `socket.getPeerCertificate().fingerprint256` shows it. */
  fingerprint256: string;
}

/**
 * A fresh self-signed P-256 certificate for `localhost` and 127.0.0.1, valid one day, made by Debian's openssl
 * (Node can verify certificates but not issue them). Each call makes a new key, so two calls give two
 * certificates a client can tell apart.
 */
export function makeCertificate(commonName = 'localhost', directory = mkdtempSync(path.join(tmpdir(), 'gateway-tls-'))): TestCertificate {
  const stem = `${commonName}-${Math.random().toString(16).slice(2, 10)}`;
  const certFile = path.join(directory, `${stem}.crt`);
  const keyFile = path.join(directory, `${stem}.key`);
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', `/CN=${commonName}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
    { stdio: 'ignore', env: { PATH: process.env.PATH ?? '' } },
  );
  const cert = readFileSync(certFile, 'utf8');
  return { certFile, keyFile, cert, fingerprint256: new X509Certificate(cert).fingerprint256 };
}
