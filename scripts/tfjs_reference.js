// Runs a TensorFlow.js graph model in its own runtime (@tensorflow/tfjs, pure-JS CPU backend) and writes
// the requested node outputs, so scripts/convert_face_backbone.py can compare its PyTorch port with them.
//
// node tfjs_reference.js MODEL_JSON INPUT_F32 N,H,W,C OUT_DIR NODE [NODE ...]
//   INPUT_F32: raw little-endian float32, NHWC, the model's input as is (already normalised).
//   Writes OUT_DIR/<i>.f32 (raw float32) for the i-th NODE and OUT_DIR/outputs.json (names and shapes).
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelJson, inputFile, shapeText, outDir, ...nodes] = process.argv.slice(2);
  const model = JSON.parse(fs.readFileSync(modelJson));
  const folder = path.dirname(modelJson);
  const specs = [];
  const buffers = [];
  for (const group of model.weightsManifest) {
    specs.push(...group.weights);
    for (const file of group.paths) buffers.push(fs.readFileSync(path.join(folder, file)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const graph = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: model.modelTopology, weightSpecs: specs, weightData, format: model.format,
    generatedBy: model.generatedBy, convertedBy: model.convertedBy, signature: model.signature,
    userDefinedMetadata: model.userDefinedMetadata,
  }));
  const shape = shapeText.split(',').map(Number);
  const raw = fs.readFileSync(inputFile);
  const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor(values, shape, 'float32');
  const inputName = graph.inputs[0].name;
  let outputs = graph.execute({ [inputName]: input }, nodes);
  if (!Array.isArray(outputs)) outputs = [outputs];
  const described = [];
  for (let i = 0; i < outputs.length; i += 1) {
    const data = await outputs[i].data();
    fs.writeFileSync(path.join(outDir, `${i}.f32`), Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    described.push({ name: nodes[i], shape: outputs[i].shape });
  }
  fs.writeFileSync(path.join(outDir, 'outputs.json'), JSON.stringify({ backend: tf.getBackend(), tfjs: tf.version.tfjs, outputs: described }));
}

main().catch((error) => { console.error(error); process.exit(1); });
