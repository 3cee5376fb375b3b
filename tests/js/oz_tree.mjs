// Reads {"entries": [[address, "amount in decimal"], ...]} as JSON on stdin and prints
// {"root": "0x..", "proofs": [[...], ...], "build_ms": n} where proofs[i] is the proof of
// entries[i], all from OpenZeppelin's StandardMerkleTree with leaf encoding [address, uint256].
// With {"proofs": false} it prints only the root (for timing large trees).
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);
const values = request.entries.map(([address, amount]) => [address, BigInt(amount)]);

const start = performance.now();
const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
const buildMs = performance.now() - start;

const out = { root: tree.root, build_ms: buildMs };
if (request.proofs !== false) {
  out.proofs = values.map((_, i) => tree.getProof(i));
}
process.stdout.write(JSON.stringify(out));
