import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';

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
 * certificates a client can tell apart. `key: 'rsa'` makes an RSA-2048 one (TLS 1.2 suites differ by key type).
 */
export function makeCertificate(commonName = 'localhost', directory = mkdtempSync(path.join(tmpdir(), 'gateway-tls-')), key: 'ec' | 'rsa' = 'ec'): TestCertificate {
  const stem = `${commonName}-${Math.random().toString(16).slice(2, 10)}`;
  const certFile = path.join(directory, `${stem}.crt`);
  const keyFile = path.join(directory, `${stem}.key`);
  execFileSync(
    'openssl',
    ['req', '-x509', ...(key === 'rsa' ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']), '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', `/CN=${commonName}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
    { stdio: 'ignore', env: { PATH: process.env.PATH ?? '' } },
  );
  const cert = readFileSync(certFile, 'utf8');
  return { certFile, keyFile, cert, fingerprint256: new X509Certificate(cert).fingerprint256 };
}

/**
 * A self-signed certificate valid only between two dates (`20200101000000Z`), for expired and not yet valid
 * ones: `openssl req -x509` takes a number of days from now only, `openssl ca` takes both dates.
 */
export function makeCertificateValidBetween(startDate: string, endDate: string, directory = mkdtempSync(path.join(tmpdir(), 'gateway-tls-'))): TestCertificate {
  const work = mkdtempSync(path.join(directory, 'ca-'));
  writeFileSync(path.join(work, 'index.txt'), '');
  writeFileSync(path.join(work, 'serial'), '01\n');
  writeFileSync(path.join(work, 'ca.cnf'), '[ca]\ndefault_ca = own\n[own]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n');
  const keyFile = path.join(directory, `dated-${path.basename(work)}.key`);
  const certFile = path.join(directory, `dated-${path.basename(work)}.crt`);
  const run = (args: string[]) => execFileSync('openssl', args, { cwd: work, stdio: 'ignore', env: { PATH: process.env.PATH ?? '' } });
  run(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', 'request.csr', '-subj', '/CN=localhost']);
  run(['ca', '-batch', '-config', 'ca.cnf', '-selfsign', '-keyfile', keyFile, '-in', 'request.csr', '-startdate', startDate, '-enddate', endDate, '-notext', '-out', certFile]);
  const cert = readFileSync(certFile, 'utf8');
  return { certFile, keyFile, cert, fingerprint256: new X509Certificate(cert).fingerprint256 };
}

/** Two certificates in a fresh folder, and the `live` pair a server reads, a copy of the first for now (rotation tests). */
export function rotatingCertificates(prefix: string) {
  const directory = mkdtempSync(path.join(tmpdir(), prefix));
  const first = makeCertificate('first', directory);
  const second = makeCertificate('second', directory);
  const live = { certFile: path.join(directory, 'live.crt'), keyFile: path.join(directory, 'live.key') };
  copyFileSync(first.certFile, live.certFile);
  copyFileSync(first.keyFile, live.keyFile);
  return { directory, first, second, live };
}

/** The fingerprint of the certificate a new TLS connection to `origin` is shown, trusting `ca`. */
export async function presentedFingerprint(origin: string, ca: string[]): Promise<string> {
  const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(origin).port), ca, servername: 'localhost', ALPNProtocols: ['h2', 'http/1.1'] });
  try {
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    return socket.getPeerCertificate().fingerprint256;
  } finally {
    socket.destroy();
  }
}
